"""llmcourse.alignment"""

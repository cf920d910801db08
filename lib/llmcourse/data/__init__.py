"""llmcourse.data"""

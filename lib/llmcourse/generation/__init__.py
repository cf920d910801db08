"""llmcourse.generation"""

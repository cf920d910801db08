"""llmcourse.recurrent"""

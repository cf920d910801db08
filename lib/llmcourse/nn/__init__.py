"""llmcourse.nn"""

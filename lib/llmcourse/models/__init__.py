"""llmcourse.models"""

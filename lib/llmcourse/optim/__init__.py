"""llmcourse.optim"""

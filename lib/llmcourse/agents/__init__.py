"""llmcourse.agents"""

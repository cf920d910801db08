"""llmcourse.retrieval"""

"""llmcourse.tokenizers"""

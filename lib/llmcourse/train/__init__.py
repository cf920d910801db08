"""llmcourse.train"""

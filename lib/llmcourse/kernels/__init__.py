"""llmcourse.kernels"""

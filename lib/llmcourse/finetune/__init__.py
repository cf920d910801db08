"""llmcourse.finetune"""

"""llmq's contracts: what travels on the topics and what is stored in Redis.

Imports nothing of ours; every other package imports from here.
"""

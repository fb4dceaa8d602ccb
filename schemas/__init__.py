"""llmq's contracts: what travels on the topics and what is stored in Redis.

Imports nothing of ours; streams/, workers/ and llmq/ all import from here.
"""

"""`llmq bench`: ShareGPT through the bare engine, vLLM's OpenAI server and llmq, side by side."""

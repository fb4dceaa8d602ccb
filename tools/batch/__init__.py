"""`llmq batch`: the front door's Batch API from the command line."""

"""The front door's Batch API: files of requests, run on the batch lane, kept in Redis."""

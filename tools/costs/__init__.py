"""`llmq costs`: what the metering says was spent, and saved, per tenant, model, lane, cache
outcome and day, from the stream processor's hourly rollups."""

"""Workers: engines, the worker loop that feeds them from Kafka, and model preparation."""

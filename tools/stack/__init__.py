"""The local stack: Kafka, Redis, the stream processor and workers on one machine."""

"""The local stack: Kafka, Redis, the stream processor and workers on one machine."""

MAX_STREAMS = 4
"""Stream-processor instances a local stack may run (each needs partitions to own); here,
so that `llmq local --help` stays light."""

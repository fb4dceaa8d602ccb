"""llmq's face: the app client, the CLI, and the local stack runner."""

from llmq.client import Client

__all__ = ["Client"]

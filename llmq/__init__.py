"""The app client library: publish requests as one tenant, collect results by correlation id
(Client), and the `llmq` command. Small on purpose: it imports no engine, model or plotting
library, and none of the tooling."""

from llmq.client import Client

__all__ = ["Client"]

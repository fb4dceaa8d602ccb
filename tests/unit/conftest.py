"""Unit tests reach no Kafka or Redis: a service a test builds with its default settings
would otherwise use the local stack's (`llmq local up`), when one is running, and the tests
then passed or failed by whether it was, and left its connections open."""

from __future__ import annotations

import pytest

NOWHERE = "127.0.0.1:1"
"""An address nothing listens on: a connection to it is refused at once."""


@pytest.fixture(autouse=True)
def no_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka and Redis are away unless a test says where they are."""
    monkeypatch.setenv("LLMQ_KAFKA_BOOTSTRAP", NOWHERE)
    monkeypatch.setenv("LLMQ_REDIS_URL", f"redis://{NOWHERE}/0")

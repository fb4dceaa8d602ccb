"""An app on the host finds a moved stack (local or docker-compose, both publish on
LLMQ_KAFKA_PORT and LLMQ_REDIS_PORT) as the `llmq` command does, with no other setting."""

from __future__ import annotations

import pytest

from llmq.aio import AsyncClient
from llmq.client import Client
from llmq.settings import ClientSettings

pytestmark = pytest.mark.timeout(30)


def test_both_clients_default_to_the_settings_the_cli_uses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LLMQ_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("LLMQ_REDIS_URL", raising=False)
    monkeypatch.setenv("LLMQ_KAFKA_PORT", "39092")
    monkeypatch.setenv("LLMQ_REDIS_PORT", "36379")
    cli = ClientSettings()
    assert cli.kafka_bootstrap == "127.0.0.1:39092"
    assert cli.redis_url == "redis://127.0.0.1:36379/0"
    with Client(listen=False) as app:  # connects to nothing until it is used
        assert (app.settings.kafka_bootstrap, app.settings.redis_url) == (
            cli.kafka_bootstrap,
            cli.redis_url,
        )
    aio_app = AsyncClient()  # connects in start(), never called here
    assert (aio_app.settings.kafka_bootstrap, aio_app.settings.redis_url) == (
        cli.kafka_bootstrap,
        cli.redis_url,
    )

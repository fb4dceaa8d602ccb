"""`python -m gateway`: serve OpenAI's chat-completions API over llmq until SIGTERM."""

from __future__ import annotations

import logging
import sys

import uvicorn
from prometheus_client import start_http_server

from gateway.app import build
from gateway.settings import GatewaySettings

log = logging.getLogger("gateway")


def main() -> int:
    """Validate the settings, the catalog and the keys before listening; on SIGTERM stop
    taking requests and let open ones finish (LLMQ_DRAIN_TIMEOUT_S)."""
    settings = GatewaySettings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        catalog = settings.catalog()
        policy = settings.policy()
    except ValueError as exc:
        log.error("cannot start the front door: %s", exc)
        return 2
    if settings.metrics_port:  # /metrics is on the API port too; this one is for scrapers
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    keys = f"{len(policy.api_keys)} API keys" if policy.api_keys else "no API keys: tenant default"
    log.info("front door on http://%s:%d (%s)", settings.api_host, settings.api_port, keys)
    config = uvicorn.Config(
        build(settings, catalog, policy),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        access_log=False,
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m gateway`: serve OpenAI's chat-completions API over llmq until SIGTERM."""

from __future__ import annotations

import logging
import sys

import uvicorn

from gateway.app import build
from gateway.settings import GatewaySettings
from llmq import startup

log = logging.getLogger("gateway")


def main() -> int:
    """Validate the settings, the catalog and the keys, bind the API port and reach Kafka
    before the app connects anything; on SIGTERM stop taking requests and let open ones
    finish (LLMQ_DRAIN_TIMEOUT_S). The exit code (a refusal to start is one line:
    llmq.startup)."""
    return startup.run(_serve, log, "the front door")


def _serve() -> int:
    settings = startup.read_settings(GatewaySettings)
    startup.log_to_stderr(settings.log_level)
    catalog = startup.configured(settings.catalog)
    policy = startup.configured(settings.policy)
    startup.serve_metrics(settings)  # /metrics is on the API port too; this one is for scrapers
    sock = startup.listen(settings.api_host, settings.api_port, "LLMQ_API_HOST, LLMQ_API_PORT")
    startup.reach_kafka(settings, settings.instance_id)
    keys = f"{len(policy.api_keys)} API keys" if policy.api_keys else "no API keys: tenant default"
    where = startup.address(settings.api_host, settings.api_port)
    log.info("front door on http://%s (%s)", where, keys)
    config = uvicorn.Config(
        build(settings, catalog, policy),
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        access_log=False,
        # Not uvloop (uvicorn's pick when installed): uvloop 0.23 swallows a cancellation that
        # lands while a connection opens, so a task cancelled in a Redis call's connect ran on
        # (the batch runner at a stop: the front door then never exited).
        loop="asyncio",
    )
    uvicorn.Server(config).run(sockets=[sock])  # its host and port: the socket's, not config's
    return 0


if __name__ == "__main__":
    sys.exit(main())

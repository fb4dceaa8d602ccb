"""`python -m streams`: run one stream-processor instance until SIGTERM."""

from __future__ import annotations

import logging

from prometheus_client import start_http_server

from schemas.redact import log_content
from schemas.tenants import TenantPolicy
from streams.app import build
from streams.settings import StreamSettings
from streams.stopping import BoundedWorker


def main() -> None:
    """Validate settings, serve /metrics, hand the loop to faust (which drains on SIGTERM,
    within LLMQ_DRAIN_TIMEOUT_S)."""
    settings = StreamSettings()
    settings.catalog()  # a bad models file fails here, with its reason, not in an agent
    TenantPolicy.load(settings.tenants_file)  # likewise a bad tenants file
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    log = logging.getLogger("streams")
    log.setLevel(settings.log_level)
    # faust sets up logging when its Worker starts: until then, what building the app says
    # (which semantic-cache guard, which precision) needs a handler of its own.
    early = logging.StreamHandler()
    early.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"))
    log.addHandler(early)
    try:
        app = build(settings)
    finally:
        log.removeHandler(early)
    log_content(settings.log_content)
    worker = BoundedWorker(
        app, drain_timeout_s=settings.drain_timeout_s, loglevel=settings.log_level
    )
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()

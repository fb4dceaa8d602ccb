"""`python -m streams`: run one stream-processor instance until SIGTERM."""

from __future__ import annotations

import logging
import sys
from functools import partial

from llmq import startup
from schemas.redact import log_content
from schemas.tenants import TenantPolicy
from streams.app import build
from streams.settings import StreamSettings
from streams.stopping import BoundedWorker

log = logging.getLogger("streams")


def main() -> int:
    """Validate settings, serve /metrics, reach Kafka, hand the loop to faust (which drains on
    SIGTERM, within LLMQ_DRAIN_TIMEOUT_S); the exit code (a refusal to start is one line:
    llmq.startup)."""
    return startup.run(_serve, log, "the stream processor")


def _serve() -> int:
    settings = startup.read_settings(StreamSettings)
    # A bad models or tenants file, or Kafka away, fails here, in one line: not in an agent,
    # not after the embedder loaded, not in faust's traceback.
    startup.configured(settings.catalog)
    startup.configured(partial(TenantPolicy.load, settings.tenants_file))
    startup.serve_metrics(settings)
    startup.reach_kafka(settings, settings.app_id)
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
    sys.exit(main())

"""`python -m autoscaler`: size every model's worker pool until SIGTERM. Here it only exports
the figure (llmq_autoscaler_desired_replicas, for KEDA); the local stack runs it with an
actuator that starts and stops workers (python -m tools.stack.autoscale)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from functools import partial

from aiokafka.errors import KafkaError

from autoscaler.actuator import Actuator, Exported
from autoscaler.service import CLIENT_ID, Autoscaler
from autoscaler.settings import AutoscalerSettings
from llmq import startup
from schemas.names import work_topics

log = logging.getLogger("autoscaler")


def main(actuator: Actuator | None = None) -> int:
    """Validate the settings and the catalog, serve /metrics, reach Kafka, run until SIGTERM;
    the exit code (a refusal to start is one line: llmq.startup)."""
    return startup.run(partial(_main, actuator), log, "the autoscaler")


def _main(actuator: Actuator | None) -> int:
    settings = startup.read_settings(AutoscalerSettings)
    startup.log_to_stderr(settings.log_level)
    catalog = startup.configured(settings.catalog)
    startup.serve_metrics(settings)
    # Its reader subscribes to every lane topic: one missing would be auto-created.
    needs = [topic for model in catalog.names for topic in work_topics(model)]
    startup.reach_kafka(settings, CLIENT_ID, needs=needs)
    try:
        asyncio.run(_run(settings, actuator or Exported()))
    except (KafkaError, RuntimeError) as exc:  # only its start lets them out: Kafka lost since
        raise startup.kafka_failed(settings, exc) from None  # reach_kafka; a topic missing
    return 0


async def _run(settings: AutoscalerSettings, actuator: Actuator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Autoscaler(settings, actuator).run(stop)


if __name__ == "__main__":
    sys.exit(main())

"""`python -m autoscaler`: size every model's worker pool until SIGTERM. Here it only exports
the figure (llmq_autoscaler_desired_replicas, for KEDA); the local stack runs it with an
actuator that starts and stops workers (python -m tools.stack.autoscale)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from prometheus_client import start_http_server

from autoscaler.actuator import Actuator, Exported
from autoscaler.service import Autoscaler
from autoscaler.settings import AutoscalerSettings

log = logging.getLogger("autoscaler")


def main(actuator: Actuator | None = None) -> int:
    """Validate the settings and the catalog, serve /metrics, run until SIGTERM."""
    settings = AutoscalerSettings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings.catalog()
    except ValueError as exc:
        log.error("cannot start the autoscaler: %s", exc)
        return 2
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    asyncio.run(_run(settings, actuator or Exported()))
    return 0


async def _run(settings: AutoscalerSettings, actuator: Actuator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Autoscaler(settings, actuator).run(stop)


if __name__ == "__main__":
    sys.exit(main())

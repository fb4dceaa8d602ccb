"""`python -m tools.stack.autoscale`: the local stack's autoscaler, the service's own loop
with an actuator that starts the stack's workers through its launcher and stops them with
SIGTERM, so each drains before it goes."""

from __future__ import annotations

import asyncio
import logging
import sys
from functools import partial

from autoscaler.__main__ import main as autoscaler_main
from tools.stack.stack import LocalStack

log = logging.getLogger("autoscaler.local")


class LocalActuator:
    """Keeps replicas 1..n of each model's workers running: starts the missing lowest ones
    (they join the group once their engine is up), stops the highest ones beyond n (SIGTERM:
    each finishes its generations and commits first), one stop at a time per replica."""

    def __init__(self, stack: LocalStack) -> None:
        self._stack = stack
        self._stopping: dict[str, asyncio.Task[bool]] = {}

    async def scale(self, model: str, replicas: int) -> None:
        spec = self._stack.catalog.get(model)
        if spec is None:
            return
        for number, comp in enumerate(self._stack.replicas(spec), start=1):
            name = comp.proc.name
            if name in self._stopping:
                continue  # still draining
            running = comp.proc.pid() is not None
            if number <= replicas and not running:
                log.info("starting %s (replica %d of %d)", name, number, replicas)
                comp.proc.start()
            elif number > replicas and running:
                log.info("stopping %s (SIGTERM: it drains first)", name)
                task = asyncio.create_task(asyncio.to_thread(comp.proc.stop))
                self._stopping[name] = task
                task.add_done_callback(partial(self._stopped, name))

    def _stopped(self, name: str, _: asyncio.Task[bool]) -> None:
        self._stopping.pop(name, None)


def main() -> int:
    """The autoscaler of the stack these LLMQ_* variables describe."""
    return autoscaler_main(LocalActuator(LocalStack()))


if __name__ == "__main__":
    sys.exit(main())

"""The autoscaler's loop: every tick, for every model, look at its pool, decide, export the
figure and its inputs, log a change with its reason, and hand it to the actuator."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

from aiokafka.errors import KafkaError

from autoscaler import metrics
from autoscaler.actuator import Actuator
from autoscaler.policy import Decision, Observation, Policy
from autoscaler.pools import Pools, PoolView
from autoscaler.rates import ArrivalRate, PoolRates
from autoscaler.settings import AutoscalerSettings
from llmq.groups import DEAD
from llmq.throttle import apart
from schemas.catalog import ModelSpec
from schemas.lanes import Lane

log = logging.getLogger(__name__)

CLIENT_ID = "llmq-autoscaler"
LOOK_TIMEOUT_S = 30.0
"""The longest one look at a pool may take: a Kafka call that hangs skips the tick, said."""
SAY_EVERY_S = 60.0
"""How often a figure that did not change is logged again with its reason of the moment,
so that the log shows why a pool stays as it is."""
READ_AGAIN_S = 1.0
"""How long after the reader of the work topics died it starts again."""
WITHDRAW_AFTER_S = 120.0
"""How long a model's looks fail before its figure is withdrawn, so that KEDA's fallback
(the most replicas) applies rather than a stale figure. Time, not a count of looks: a
broker's restart moves the group's coordinator, and the looks fail at once (a coordinator
moving or still loading its offsets, llmq.groups) for the tens of seconds that takes, at
every tick; the last figure holds the pool through that. Past two minutes, four looks that
hang (LOOK_TIMEOUT_S), it is an outage."""


@dataclass
class _Model:
    """What the autoscaler keeps of one model between ticks."""

    spec: ModelSpec
    policy: Policy
    service: PoolRates
    arrivals: ArrivalRate = field(default_factory=ArrivalRate)
    last: PoolView | None = None
    last_at: float | None = None
    desired: int | None = None
    said_at: float = float("-inf")
    failing_since: float | None = None
    """When the looks at the pool began to fail (None: the last one did not)."""
    withdrawn: bool = False
    """The figure was withdrawn (its looks failed for WITHDRAW_AFTER_S)."""


class Autoscaler:
    """Sizes every model's pool; `actuator` makes it so."""

    def __init__(self, settings: AutoscalerSettings, actuator: Actuator) -> None:
        self._settings = settings
        self._actuator = actuator
        self._models = {
            spec.name: _Model(
                spec,
                Policy(settings.targets()),
                PoolRates(settings.tokens_per_s, in_flight=spec.max_inflight),
            )
            for spec in settings.catalog().models
        }
        self._pools = Pools(settings, list(self._models), CLIENT_ID)
        metrics.changes_at_zero(self._models)

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set."""
        try:
            await self._pools.start()
        except BaseException:  # Kafka lost since the start-up check, a topic missing
            await self._pools.close()
            raise
        reading = asyncio.create_task(self._read(), name="autoscaler-reads")
        metrics.READY.set(1)
        log.info("autoscaling %s every %gs", sorted(self._models), self._settings.autoscaler_tick_s)
        try:
            while not stop.is_set():
                for name, model in self._models.items():
                    if stop.is_set():  # each look may take LOOK_TIMEOUT_S: not one more
                        break
                    await self._tick(name, model, stop)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._settings.autoscaler_tick_s)
        finally:
            metrics.READY.set(0)
            reading.cancel()
            await self._pools.close()

    async def _read(self) -> None:
        """Follow the work topics until cancelled. A reader that dies is said and started
        again: unseen, its death would freeze the arrivals and the backlog's weights."""
        while True:
            try:
                await self._pools.follow()
            except Exception:
                log.exception("reading the work topics failed, starting again")
                await asyncio.sleep(READ_AGAIN_S)

    async def _tick(self, name: str, model: _Model, stop: asyncio.Event) -> None:
        try:
            async with asyncio.timeout(LOOK_TIMEOUT_S):
                view = await _unless_stopped(stop, self._pools.look(name))
        except (KafkaError, TimeoutError) as exc:
            log.warning("cannot see the pool of %s this tick: %r", name, exc, extra=apart(name))
            self._failed(name, model)
            return
        if view is None:  # stopped meanwhile: a look that hangs would hold the stop up
            return
        if model.withdrawn:
            log.info("%s: the pool is seen again: its figure is back", name)
        model.failing_since, model.withdrawn = None, False
        now = time.monotonic()
        decision = model.policy.decide(self._observe(model, view, now))
        if decision.desired != model.desired:
            if model.desired is not None:  # the first figure is no change of the pool's size
                direction = "up" if model.desired < decision.desired else "down"
                metrics.DECISIONS.labels(name, direction).inc()
            log.info("%s: %s", name, decision.reason)
            model.desired, model.said_at = decision.desired, now
        elif now - model.said_at >= SAY_EVERY_S:
            log.info("%s: still %s", name, decision.reason)
            model.said_at = now
        self._export(name, model, view, decision)
        await self._actuator.scale(name, decision.desired)

    def _failed(self, name: str, model: _Model) -> None:
        """A look failed: the figure is withdrawn once they failed for WITHDRAW_AFTER_S. The
        serving since the last look is not measured: Kafka away, the workers could neither
        fetch nor commit, and the interval would pass for a slow pool."""
        now = time.monotonic()
        model.last = None
        if model.failing_since is None:
            model.failing_since = now
        failing_s = now - model.failing_since
        # Only a figure this process set (prometheus-client < 0.22 raises otherwise).
        if failing_s >= WITHDRAW_AFTER_S and model.desired is not None and not model.withdrawn:
            metrics.DESIRED.remove(name)
            model.withdrawn = True
            log.warning(
                "%s: figure withdrawn after %.0fs of failed looks (KEDA's fallback applies)",
                name,
                failing_s,
                extra=apart(name),
            )

    def _observe(self, model: _Model, view: PoolView, now: float) -> Observation:
        """The policy's inputs, and the service rate measured on a busy pool of one size.

        Busy: more records waiting or running than the pool's engines hold, so each is full
        and more wait. Records done behind a long generation, whose commit it holds, are no
        work: counted, an idle pool passed for a busy one and its rate fell to its arrivals.
        The work served is what the committed offsets moved past: finished records, whose
        lag behind a long generation evens out over the rate's window. Not the read
        position: it runs ahead of them by a whole engine whenever one fills (a burst, a
        worker joining), the lump ServiceRate's first-commit and turnover rules wait out."""
        busy = _busy(view, model.spec.max_inflight)
        last = model.last
        if last is not None and model.last_at is not None and last.members == view.members:
            was_busy = _busy(last, model.spec.max_inflight)
            model.service.observe(
                view.served_tokens,
                view.served_records,
                now - model.last_at,
                view.members,
                busy and was_busy,
            )
        model.arrivals.observe(now, view.arrived_tokens)
        model.last, model.last_at = view, now
        return Observation(
            now=now,
            backlog_tokens=view.backlog_tokens,
            backlog_records=view.backlog_records,
            in_flight_records=view.in_flight,
            holding=math.ceil(view.in_flight / model.spec.max_inflight),
            arrival_tokens_per_s=model.arrivals.per_s(),
            tokens_per_s=model.service.per_replica(view.members),
            running=view.members,
            partitions=view.partitions,
            capacity=model.service.capacity(),
            group_gone=view.state == DEAD,
        )

    @staticmethod
    def _export(name: str, model: _Model, view: PoolView, decision: Decision) -> None:
        metrics.DESIRED.labels(name).set(decision.desired)
        metrics.NEEDED.labels(name).set(decision.needed)
        metrics.TARGET.labels(name).set(decision.target)
        metrics.RUNNING.labels(name).set(view.members)
        metrics.BACKLOG_RECORDS.labels(name).set(view.backlog_records + view.in_flight)
        for lane in Lane:
            metrics.BACKLOG_TOKENS.labels(name, lane.value).set(view.backlog_tokens.get(lane, 0.0))
        metrics.ARRIVALS.labels(name).set(model.arrivals.per_s())
        metrics.SERVICE.labels(name).set(model.service.per_replica(view.members))


async def _unless_stopped(stop: asyncio.Event, look: Awaitable[PoolView]) -> PoolView | None:
    """The view `look` gives, or None where `stop` is set first. The look is cancelled then,
    as it is where this is (LOOK_TIMEOUT_S), and has ended when this returns: the pools close
    next."""
    task = asyncio.ensure_future(look)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    return None if task.cancelled() else task.result()


def _busy(view: PoolView, max_inflight: int) -> bool:
    """More records waiting or running than the pool's engines hold (see `_observe`)."""
    return view.backlog_records + view.in_flight > view.members * max_inflight

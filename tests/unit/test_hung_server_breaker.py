"""A remote server that takes calls and never answers: the worker cuts each at the model's
timeout_s, and those cuts count against the engine's circuit breaker, which the calls'
own end (cancelled, as for an app that left) cannot tell it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from schemas.stream import Cancel
from tests.unit.clock import Clock
from tests.unit.openai_server import BODY, ok, running, slow, spec, status
from tests.unit.worker_fakes import (
    STANDARD,
    FakeConsumer,
    FakeEngine,
    FakeProducer,
    model_spec,
    run_worker,
    serve_one,
    until,
    work,
    work_with,
)
from workers.breaker import BreakerState, CircuitBreaker
from workers.cancels import Cancellations
from workers.engine import EngineStep
from workers.openai_engine import OpenAIEngine
from workers.worker import Worker

pytestmark = pytest.mark.timeout(60)


class JudgedEngine(FakeEngine):
    """Counts what the worker tells its breaker."""

    def __init__(self, *, step_s: float = 0.0) -> None:
        super().__init__(step_s=step_s)
        self.timeouts = 0

    def timed_out(self, request_id: str) -> None:
        self.timeouts += 1


def test_a_generation_cut_at_its_timeout_before_any_step_is_the_servers_failure() -> None:
    engine = JudgedEngine(step_s=30)
    serve_one(work(), engine, spec=model_spec(timeout_s=0.05))
    assert engine.timeouts == 1


def test_a_generation_cut_by_its_deadline_is_not() -> None:
    engine = JudgedEngine(step_s=30)
    serve_one(work_with({"deadline": time.time() + 0.1}), engine)
    assert engine.timeouts == 0


def test_a_generation_cut_at_its_timeout_once_it_streams_is_not() -> None:
    """The server answered: slow, not down."""
    engine = JudgedEngine()
    engine.hold.clear()  # one token, then it waits
    serve_one(work(), engine, spec=model_spec(timeout_s=0.2))
    assert engine.timeouts == 0


def test_a_generation_cut_because_its_app_left_is_not() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(STANDARD, [work()])
    cancellations = Cancellations()
    engine = JudgedEngine()
    engine.gate.clear()  # nothing comes

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: bool(engine.started))
        assert cancellations.add(Cancel(correlation_id="standard-0", tenant="default"))
        await until(lambda: bool(producer.completions()))
        stop.set()

    run_worker(consumer, producer, lambda: engine, scenario, cancellations=cancellations)
    assert engine.timeouts == 0


async def _cut(engine: OpenAIEngine, request_id: str, timed_out: bool) -> None:
    """A generation cut as the worker's timer cuts it, then told (or not) to the engine."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            steps: AsyncIterator[EngineStep] = engine.generate(request_id, BODY, 1)
            async for _ in steps:
                pass
    if timed_out:
        engine.timed_out(request_id)


@pytest.mark.parametrize("timed_out", [True, False], ids=["timeout", "cancelled"])
def test_calls_to_a_hung_server_cut_at_their_timeout_open_the_circuit(timed_out: bool) -> None:
    async def scenario() -> BreakerState:
        async with running(slow(30, ok())) as (server, url):
            breaker = CircuitBreaker("hung", failure_threshold=3, cooldown_s=30)
            engine = OpenAIEngine(spec(url), breaker=breaker)
            try:
                await asyncio.gather(*(_cut(engine, f"r{i}", timed_out) for i in range(3)))
            finally:
                await engine.abort_all()
            assert len(server.bodies) == 3
            return breaker.state

    state = asyncio.run(scenario())
    assert state is (BreakerState.OPEN if timed_out else BreakerState.CLOSED)


def test_a_probe_cut_at_its_timeout_opens_the_circuit_again() -> None:
    clock = Clock()

    async def scenario() -> tuple[BreakerState, BreakerState]:
        async with running(slow(30, ok())) as (_, url):
            breaker = CircuitBreaker("hung", failure_threshold=1, cooldown_s=30, clock=clock)
            engine = OpenAIEngine(spec(url), breaker=breaker)
            try:
                await _cut(engine, "first", timed_out=True)
                opened = breaker.state
                clock.now += 31  # the cooldown is over: the next call probes
                await _cut(engine, "probe", timed_out=True)
            finally:
                await engine.abort_all()
            return opened, breaker.state

    assert asyncio.run(scenario()) == (BreakerState.OPEN, BreakerState.OPEN)


def test_a_call_cut_while_it_waits_to_retry_a_counted_failure_is_not_counted_again() -> None:
    """A 503 saying Retry-After 5 is one failure; the worker's timeout during that wait was
    counted as a second, "no answer", and one request opened a circuit of two."""

    async def scenario() -> tuple[int, BreakerState]:
        busy = status(503, "busy", {"Retry-After": "5"})
        async with running(busy, ok()) as (server, url):
            breaker = CircuitBreaker("busy", failure_threshold=2, cooldown_s=30)
            engine = OpenAIEngine(spec(url), breaker=breaker)
            try:
                await _cut(engine, "r1", timed_out=True)
            finally:
                await engine.abort_all()
            return len(server.bodies), breaker.state

    assert asyncio.run(scenario()) == (1, BreakerState.CLOSED)

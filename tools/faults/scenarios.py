"""The faults, one function each: a real load through the running stack, the fault injected
while it runs, the stack healed, and every accepted request counted against its replies.

Each takes the Rig and fills in its Outcome as it goes (what it noted stays when it fails).
Time stamps are time.monotonic() of the harness.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kafka import KafkaConsumer

from llmq.client import tail
from schemas.lanes import Lane
from schemas.names import (
    COMPLETIONS,
    DLQ,
    HEADER_ERROR_CODE,
    HEADER_REASON,
    HEADER_SOURCE_TOPIC,
    REQUESTS,
    work_topic,
    work_topics,
    worker_group,
)
from schemas.request import InferenceRequest
from tools.faults.load import Load
from tools.faults.outcome import Finding, Kind, Outcome
from tools.faults.probe import Backlog, Peaks, drained, log_lines, metric, rss_bytes
from tools.faults.rig import Rig, kill9, wait_until
from tools.faults.tally import Tally
from tools.stack.stack import Component

DRAIN_S = 240.0
"""How long every accepted request may take to be answered after the load stops."""
AFTER_S = 5.0
"""Steady load kept up after the stack is healed, so recovery is measured on new requests."""
BUSY_WAIT_S = 90.0
KAFKA_DOWN_S = 12.0
REDIS_DOWN_S = 30.0
LONG_TOKENS = 200
"""The coalesced request's length: long enough to be in flight across a kill."""
OVERLOAD = 10.0
"""The overload's rate, in multiples of the measured service rate."""
DEADLINE_S = 600.0
"""The overload's requests' deadline: far enough that none may expire in the backlog."""
GENERATIONS = "llmq_worker_generations_total"
RSS_GROWTH = 0.25
"""The most the overload may grow a process's RSS (with its children's), as a share of its
RSS before the overload: memory stays bounded while the backlog grows in Kafka."""


@dataclass(frozen=True)
class Scenario:
    """A fault, how to run it, and the components it restarts on purpose (any other that
    restarts or dies during it is a finding)."""

    fault: str
    run: Callable[[Rig, Outcome], None]
    restarts: frozenset[str] = frozenset()
    brokers: int = 1
    """The stack it needs: 1 broker, or a cluster of 3."""
    expected_errors: Mapping[str, int] = field(default_factory=dict)
    """Error replies it causes on purpose, by code: how many."""
    timing_errors: frozenset[str] = frozenset()
    """Codes its fault may give where it outlasts a timeout: a timing finding."""

    def error_findings(self, tally: Tally) -> list[Finding]:
        """Error replies beyond those it expects: an error reply is a reply, but not the
        answer the scenario promises, so it breaks a guarantee unless timing may cause it."""
        extra = Counter(tally.errors) - Counter(self.expected_errors)
        broken = Counter({c: n for c, n in extra.items() if c not in self.timing_errors})
        return [
            Finding(kind, f"error replies it does not expect: {counts(codes)}")
            for kind, codes in ((Kind.BROKEN, broken), (Kind.TIMING, extra - broken))
            if codes
        ]


def worker_kill(rig: Rig, out: Outcome) -> None:
    """kill -9 of the worker (and its engine) with generations in flight; restarted."""
    worker = rig.component("worker")
    with Load(rig.bootstrap, out.scenario) as load:
        load.steady(rig.rate)
        out.reached(load.wait_for(lambda: load.answered() >= 3, BUSY_WAIT_S), "a warm stack")
        # A burst on top, so the kill finds a batch in the engine.
        burst = _burst(rig)
        for _ in range(burst):
            load.send(load.request())
        out.reached(
            wait_until(lambda: rig.in_flight(worker) >= burst / 2, BUSY_WAIT_S, interval_s=0.05),
            f"half the burst of {burst} in the engine at the kill",
        )
        busy = rig.in_flight(worker)
        pid = worker.proc.pid()
        rig.say(f"killing {worker.proc.name} pid {pid} with {busy:.0f} in flight (kill -9)")
        fault_at, back_s = _kill_and_heal(rig, worker, "worker")
        out.tally = load.finish(fault_at, DRAIN_S)
    out.notes += [f"{busy:.0f} in flight at the kill", f"worker ready again after {back_s:.0f} s"]


def _kill_and_heal(rig: Rig, component: Component, what: str) -> tuple[float, float]:
    """kill -9 `component`, restart it, let the load run on; returns when the fault came
    (monotonic) and how long the restart took."""
    fault_at = time.monotonic()
    kill9(component)
    rig.heal()
    back_s = time.monotonic() - fault_at
    rig.say(f"{what} ready again {back_s:.0f} s after the kill")
    time.sleep(AFTER_S)
    return fault_at, back_s


def streams_kill(rig: Rig, out: Outcome) -> None:
    """kill -9 of the stream processor while copies of a request wait on its generation."""
    streams = rig.component("streams")
    copies = max(3, round(20 * rig.scale))

    def coalesced() -> float:
        return metric(streams.endpoint, "llmq_streams_requests_total", outcome="coalesced") or 0.0

    with Load(rig.bootstrap, out.scenario) as load:
        load.steady(rig.rate / 2)
        prompt = f"Write a long story about a lighthouse keeper who learns to sail. ({load.tag})"
        before = coalesced()
        ids = [load.send(load.request(prompt, LONG_TOKENS))]
        time.sleep(0.5)
        ids += [load.send(load.request(prompt, LONG_TOKENS)) for _ in range(copies - 1)]
        out.reached(
            wait_until(lambda: coalesced() - before >= copies - 1, BUSY_WAIT_S),
            f"{copies - 1} copies waiting as followers at the kill",
        )
        waiting = coalesced() - before
        leader_done = load.first_reply(ids[0]) is not None
        pid = streams.proc.pid()
        rig.say(f"killing streams pid {pid} with {waiting:.0f} followers waiting (kill -9)")
        fault_at, back_s = _kill_and_heal(rig, streams, "streams")
        out.tally = load.finish(fault_at, DRAIN_S)
        firsts = [r for r in map(load.first_reply, ids) if r is not None]
    out.notes += [
        f"{copies} copies of one {LONG_TOKENS}-token request, {waiting:.0f} waiting as "
        "followers at the kill",
        f"streams ready again after {back_s:.0f} s",
        "copies answered: " + counts(Counter(r.cache for r in firsts)),
    ]
    if leader_done:
        out.timing("the generation had finished before the kill: nobody was waiting")
    if len({(r.status, r.text) for r in firsts}) > 1:
        out.broken("the copies of one request got different answers")


def kafka_stop(rig: Rig, out: Outcome) -> None:
    """The broker stopped (gracefully) under load, kept down, started again; while it is
    away the stream processor gets SIGTERM (a node drained in the outage) and must leave by
    itself, not be killed at the end of its grace."""
    kafka, streams = rig.component("kafka"), rig.component("streams")
    with Load(rig.bootstrap, out.scenario) as load:
        load.steady(rig.rate)
        out.reached(load.wait_for(lambda: load.answered() >= 3, BUSY_WAIT_S), "a warm stack")
        before = rig.pids()
        rig.say(f"stopping Kafka pid {before['kafka']} (SIGTERM) for {KAFKA_DOWN_S:.0f} s")
        fault_at = time.monotonic()
        kafka.proc.stop()
        time.sleep(KAFKA_DOWN_S)
        # Before `up` would restart them: which llmq processes died while Kafka was away?
        for name, pid in rig.pids().items():
            if name != "kafka" and pid != before[name]:
                said = " | ".join(log_lines(rig.component(name).proc))
                out.broken(f"{name} exited while Kafka was down; its log ends: {said}")
        rig.say("SIGTERM to the stream processor while Kafka is away")
        left_s = rig.stop(streams)
        rig.say("starting Kafka and the stream processor again")
        rig.heal()
        back_s = time.monotonic() - fault_at
        time.sleep(AFTER_S)
        out.tally = load.finish(fault_at, DRAIN_S)
    out.notes.append(f"Kafka down {KAFKA_DOWN_S:.0f} s, ready again after {back_s:.0f} s")
    if left_s is None:
        out.broken("streams was not running when its SIGTERM came while Kafka was away")
        return
    out.notes.append(f"streams left {left_s:.1f} s after its SIGTERM while Kafka was away")
    if left_s >= streams.proc.stop_timeout_s:
        out.broken("streams did not leave by itself while Kafka was away: it was killed")


def redis_stop(rig: Rig, out: Outcome) -> None:
    """Redis stopped for REDIS_DOWN_S under a load with repeats, then started; the exact
    cache must work again afterwards."""
    redis = rig.component("redis")
    with Load(rig.bootstrap, out.scenario) as load:
        # Answers to repeat: once answered they are in the exact cache.
        warm = [load.request() for _ in range(4)]
        out.reached(
            load.wait_answered([load.send(r) for r in warm], BUSY_WAIT_S),
            "answers in the exact cache to repeat",
        )
        turn = iter(range(1_000_000))

        def make() -> InferenceRequest:
            """Every third request repeats a warm one: a cache hit while Redis is up."""
            n = next(turn)
            if n % 3:
                return load.request()
            return load.request(_prompt(warm[n // 3 % len(warm)]))

        load.steady(rig.rate, make)
        time.sleep(3)
        rig.say(f"stopping Redis pid {redis.proc.pid()} (SIGTERM) for {REDIS_DOWN_S:.0f} s")
        fault_at = time.monotonic()
        redis.proc.stop()
        time.sleep(REDIS_DOWN_S)
        restored_at = time.monotonic()
        rig.heal()
        rig.say("Redis is back; checking that the exact cache answers again")
        fresh = load.request()
        load.wait_answered([load.send(fresh)], DRAIN_S)
        again = load.send(load.request(_prompt(fresh)))
        load.wait_answered([again], DRAIN_S)
        repeat = load.first_reply(again)
        time.sleep(AFTER_S)
        out.tally = load.finish(fault_at, DRAIN_S)
        during = [r for r in load.replies() if fault_at <= r.at < restored_at]
    out.notes += [
        f"{len(during)} replies during the {REDIS_DOWN_S:.0f} s outage: "
        + counts(Counter(r.status if r.status != "ok" else f"ok/{r.cache}" for r in during)),
        f"a repeat after the outage: cache {repeat.cache if repeat else 'no reply'}",
    ]
    if repeat is None or repeat.cache != "exact":
        out.broken("the exact cache did not answer a repeat after Redis came back")


def scale_down(rig: Rig, out: Outcome) -> None:
    """A second worker joins (scale-out), then gets SIGTERM under load (scale-down): it must
    drain, commit and leave, and the first takes its partitions back."""
    extra = rig.stack.replica(rig.model, 2)
    rig.say(f"starting a second worker, {extra.proc.name}")
    try:
        rig.stack.start(extra, say=lambda line: rig.say(f"  {line}"))
        with Load(rig.bootstrap, out.scenario) as load:
            load.steady(rig.rate)
            # Let it serve a while, then burst, so the SIGTERM finds a batch to drain.
            out.reached(
                wait_until(
                    lambda: (metric(extra.endpoint, GENERATIONS, outcome="ok") or 0) >= 3,
                    BUSY_WAIT_S,
                ),
                f"3 generations of {extra.proc.name} before the burst",
            )
            burst = _burst(rig)
            for _ in range(burst):
                load.send(load.request())
            out.reached(
                wait_until(lambda: rig.in_flight(extra) >= burst / 4, BUSY_WAIT_S, interval_s=0.05),
                f"a quarter of the burst of {burst} in {extra.proc.name}'s engine at the SIGTERM",
            )
            busy = rig.in_flight(extra)
            rig.say(
                f"SIGTERM to {extra.proc.name} pid {extra.proc.pid()} with {busy:.0f} in flight"
            )
            fault_at = time.monotonic()
            took_s = rig.stop(extra)
            time.sleep(AFTER_S)
            out.tally = load.finish(fault_at, DRAIN_S)
    finally:
        extra.proc.stop()
    run = log_lines(extra.proc, lines=200)
    out.notes.append(f"{busy:.0f} in flight at the SIGTERM")
    if took_s is None:
        out.broken(f"{extra.proc.name} was not running when its SIGTERM came")
        return
    out.notes.append(f"it left after {took_s:.1f} s")
    if any("handed back" in line for line in run):
        out.notes.append("it handed back unfinished requests (drain timeout)")
    if not drained(run):
        out.broken(
            f"{extra.proc.name} did not drain and exit by itself within "
            f"{extra.proc.stop_timeout_s:.0f} s"
        )


def poison(rig: Rig, out: Outcome) -> None:
    """Malformed records on llmq.requests, a work topic and llmq.completions, among good
    requests: each goes to llmq.dlq with its reason; those naming a reply topic get an error
    reply; good requests are all answered."""
    dlq = tail(rig.bootstrap, DLQ)
    try:
        with Load(rig.bootstrap, out.scenario) as load:
            load.steady(rig.rate)
            out.reached(load.wait_for(lambda: load.answered() >= 2, BUSY_WAIT_S), "a warm stack")
            records = _poison(load, work_topic(rig.model.name, Lane.STANDARD))
            rig.say(f"publishing {len(records)} poison records among the good ones")
            fault_at = time.monotonic()
            for topic, value, cid, _ in records:
                load.send_raw(topic, value, cid)
            dead = _dead_letters(dlq, {value for _, value, _, _ in records}, BUSY_WAIT_S)
            time.sleep(AFTER_S)
            out.tally = load.finish(fault_at, DRAIN_S)
            replies = {cid: load.first_reply(cid) for _, _, cid, _ in records if cid}
    finally:
        dlq.close()
    found = [dead[v] for _, v, _, _ in records if v in dead]
    out.notes.append(
        f"{len(dead)} of {len(records)} poison records on {DLQ}, by source and code: "
        + counts(Counter(f"{h.get(HEADER_SOURCE_TOPIC)} {h.get(HEADER_ERROR_CODE)}" for h in found))
    )
    for topic, value, cid, code in records:
        headers = dead.get(value)
        if headers is None:
            out.broken(f"a poison record on {topic} ({code}) never reached {DLQ}")
            continue
        if not headers.get(HEADER_REASON):
            out.broken(f"the poison record from {topic} has no {HEADER_REASON} header")
        reply = replies.get(cid) if cid is not None else None
        if cid is not None and (reply is None or reply.error_code != code):
            got = "no reply" if reply is None else f"{reply.status} {reply.error_code}"
            out.broken(f"{cid} wanted an error reply {code}, got {got}")


def _dead_letters(
    dlq: KafkaConsumer, values: set[bytes], wait_s: float
) -> dict[bytes, dict[str, str]]:
    """The headers of the DLQ records whose values are among `values`, read until all came
    or `wait_s` passed."""
    dead: dict[bytes, dict[str, str]] = {}
    deadline = time.monotonic() + wait_s
    while len(dead) < len(values) and time.monotonic() < deadline:
        for batch in dlq.poll(timeout_ms=250).values():
            for record in batch:
                if record.value in values:
                    dead[record.value] = header_map(record.headers)
    return dead


def overload(rig: Rig, out: Outcome) -> None:
    """OVERLOAD times the measured service rate for a while: the backlog grows in Kafka,
    memory stays bounded (RSS_GROWTH), and every request is answered, none rejected (the
    runner's check of error replies)."""
    worker, streams = rig.component("worker"), rig.component("streams")
    backlog = Backlog(rig.bootstrap, worker_group(rig.model.name), work_topics(rig.model.name))
    window_s = 10.0 * rig.scale
    try:
        with Load(rig.bootstrap, out.scenario) as load:
            # 1) The service rate, from a batch sent at once that nearly fills the engine.
            batch = [load.request() for _ in range(rig.model.max_inflight * 3 // 4)]
            start = time.monotonic()
            load.wait_answered([load.send(r) for r in batch], DRAIN_S)
            served_s = max(r.at for r in load.replies()) - start
            rate = len(batch) / served_s
            # 2) OVERLOAD times that, watching backlog and memory from before it starts.
            peaks = Peaks(
                {
                    "backlog": backlog,
                    "worker_rss": lambda: rss_bytes(worker.proc.pid()),
                    "streams_rss": lambda: rss_bytes(streams.proc.pid()),
                },
                interval_s=0.5,
            )
            peaks.start()
            rig.say(
                f"service rate {rate:.1f} req/s; sending {OVERLOAD * rate:.0f} req/s "
                f"for {window_s:.0f} s"
            )
            load.steady(OVERLOAD * rate, lambda: load.request(deadline=time.time() + DEADLINE_S))
            time.sleep(window_s)
            load.stop_steady()
            ended = time.monotonic()
            rig.say(f"{load.sent} sent; waiting for the backlog to drain")
            out.tally = load.finish(None, DRAIN_S + OVERLOAD * window_s * 2)
            drained_s = max(r.at for r in load.replies()) - ended
            peaks.stop()
    finally:
        backlog.close()
    out.figures = {
        "service_rate": rate,
        "overload_rate": OVERLOAD * rate,
        "backlog_before": peaks.first.get("backlog", 0.0),
        "backlog_peak": peaks.peak.get("backlog", 0.0),
        **{f"{k}_before": v for k, v in peaks.first.items() if k.endswith("_rss")},
        **{f"{k}_peak": v for k, v in peaks.peak.items() if k.endswith("_rss")},
    }
    out.notes += [
        f"{rate:.1f} req/s served, {OVERLOAD * rate:.0f} req/s sent for {window_s:.0f} s "
        f"(deadline {DEADLINE_S:.0f} s)",
        f"backlog peak {peaks.peak.get('backlog', 0):.0f} records, drained "
        f"{drained_s:.0f} s after the overload",
        *(
            f"{name} RSS {_mib(peaks.first.get(f'{name}_rss'))} before, "
            f"{_mib(peaks.peak.get(f'{name}_rss'))} peak"
            for name in ("worker", "streams")
        ),
    ]
    out.findings += memory_findings(peaks.first, peaks.peak)


def memory_findings(first: Mapping[str, float], peak: Mapping[str, float]) -> list[Finding]:
    """The worker's and the stream processor's RSS (first reading and peak, as Peaks keeps
    them) against RSS_GROWTH; one not read at all is not checked (a timing finding)."""
    found = []
    for name in ("worker", "streams"):
        before, most = first.get(f"{name}_rss"), peak.get(f"{name}_rss")
        if before is None or most is None:
            found.append(Finding(Kind.TIMING, f"{name} RSS was not read: memory not checked"))
        elif most > before * (1 + RSS_GROWTH):
            text = (
                f"{name} RSS grew {most / before - 1:.0%} under the overload, past the "
                f"{RSS_GROWTH:.0%} bound"
            )
            found.append(Finding(Kind.BROKEN, text))
    return found


def _poison(load: Load, work: str) -> list[tuple[str, bytes, str | None, str]]:
    """(topic, value, correlation id when a reply is owed, the error code expected)."""
    tag = load.tag
    unknown = load.request(model="no-such-model")
    typed_id = f"{tag}-types"
    typed = {
        "correlation_id": typed_id,
        "reply_to": load.reply_to,
        "body": {"messages": "not a list", "max_tokens": "many"},
    }
    return [
        (REQUESTS, b"\xff\xfe not JSON " + tag.encode(), None, "invalid_json"),
        (
            REQUESTS,
            json.dumps({"correlation_id": 42, "body": tag}).encode(),
            None,
            "invalid_request",
        ),
        (REQUESTS, unknown.model_dump_json().encode(), unknown.correlation_id, "unknown_model"),
        (REQUESTS, json.dumps(typed).encode(), typed_id, "invalid_request"),
        (work, f"not a work item {tag}".encode(), None, "invalid_request"),
        (
            COMPLETIONS,
            json.dumps({"not": "a completion", "tag": tag}).encode(),
            None,
            "invalid_request",
        ),
    ]


def _burst(rig: Rig) -> int:
    """Requests sent at once on top of the steady load before a worker is killed or stopped."""
    return max(4, round(12 * rig.scale))


def header_map(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: bytes(v).decode(errors="replace") for k, v in headers or []}


def _prompt(request: InferenceRequest) -> str:
    return request.body.messages[0].content


def counts(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def _mib(value: float | None) -> str:
    return "?" if value is None else f"{value / 2**20:,.0f} MiB"

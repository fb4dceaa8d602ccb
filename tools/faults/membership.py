"""Faults of membership, each under a steady load: a broker of three lost, a second stream
processor joining and leaving, the autoscaler taking a worker away in the middle of a
burst, and a request whose generation takes its worker down every time it runs."""

from __future__ import annotations

import time
from collections import Counter
from itertools import pairwise
from typing import Any

from kafka import KafkaConsumer
from pydantic import ValidationError

from llmq.client import tail
from schemas.errors import ErrorCode
from schemas.lanes import Lane
from schemas.names import DLQ, HEADER_SOURCE_TOPIC, TOKENS, topic_plan
from schemas.request import CacheMode, InferenceRequest
from schemas.stream import TokenDelta
from tools.faults.load import Load
from tools.faults.outcome import Finding, Kind, Outcome
from tools.faults.probe import drained, log_lines, metric, metrics, partition_leaders, starts
from tools.faults.rig import Rig, kill9, wait_moving, wait_until
from tools.faults.scenarios import (
    AFTER_S,
    BUSY_WAIT_S,
    DRAIN_S,
    GENERATIONS,
    LONG_TOKENS,
    counts,
    header_map,
)
from workers.starts import DEFAULT_MAX_STARTS

BROKER_DOWN_S = 30.0
"""How long the killed broker stays away: long enough for every client to move on."""
JOINED_S = 20.0
"""How long the second stream processor shares the load (at scale 1)."""
SCALE_WAIT_S = 300.0
"""How long the pool may take to grow: an engine loads beside a busy one (2-3 min here)
and joins the group."""
DESIRED = "llmq_autoscaler_desired_replicas"
TARGET = "llmq_autoscaler_target_replicas"
SHRINK_WAIT_S = 300.0
"""How long the burst may go without an answer before the autoscaler, if it has not
taken the second worker away, is found not to: it shrinks once the burst's interactive
part is done, which takes as long as the engine needs (its answers come in lumps of
generations that finish together)."""
AUTOSCALE = {
    "LLMQ_DRAIN_INTERACTIVE_S": "40",
    "LLMQ_DRAIN_STANDARD_S": "3600",
    "LLMQ_DRAIN_BATCH_S": "3600",
    "LLMQ_STABILIZATION_S": "10",
    "LLMQ_IDLE_S": "600",
    "LLMQ_AUTOSCALER_TICK_S": "1",
    "LLMQ_TOKENS_PER_S": "150",
}
"""The autoscaler's windows for the scale-down: interactive work should be done within 40 s
(the burst's interactive part needs a second worker), the rest within an hour (the batch
part and the steady load alone do not); down 10 s after the pool no longer needs two, never
to zero; a CPU's rate per worker (not a GPU's) until measured."""
URGENT_PART, URGENT_TOKENS = 150, 160
"""The burst's interactive part, that the pool grows for: a few minutes of one worker's generation
here, fixed (not scaled), so that a second worker loads and joins before it is served."""
BATCH_PART, BATCH_TOKENS = 60, 96
"""The burst's part served mostly after it (a lower lane yields to a higher one). Short
enough for one worker to finish it within the engine's timeout: with 256 tokens, on an
AVX2-only CPU in float32, 39 of them ran out of it (engine_timeout), and the scenario took
757 s instead of 400."""
TAIL_PART, TAIL_ROUNDS = 40, 3
"""Batch requests of BATCH_TOKENS sent, up to TAIL_ROUNDS times, whenever the autoscaler's
target is one worker (its desired still two) and fewer than half as many are unanswered:
the down-scale window (10 s) then ends with work unanswered on a fast machine too. Without
them the burst was once all answered by then (a CI run, 2026-12-04), and the scale-down did
not come in the middle of work."""
STEADY_RATE = 0.25
"""The steady load's most requests a second here: one worker must keep up with it with
room to spare, or no scale-down would be right. On a slow CPU (AVX2, fp32) a replica of
two serves 26-60 tokens a second, and at one request a second (34 tokens a second) the
autoscaler rightly kept both until the steady load ended (2026-11-30)."""


def broker_kill(rig: Rig, out: Outcome) -> None:
    """kill -9 of the broker leading most of llmq's partitions, kept away, restarted: its
    partitions' leadership moves to the other two, which hold every write (2 in sync)."""
    leaders = partition_leaders(rig.bootstrap, [t.name for t in topic_plan(rig.models, 1)])
    node, led = leaders.most_common(1)[0]
    victim = rig.stack.brokers[node - 1]
    with Load(rig.bootstrap, out.scenario) as load:
        load.steady(rig.rate)
        out.reached(load.wait_for(lambda: load.answered() >= 3, BUSY_WAIT_S), "a warm stack")
        rig.say(
            f"killing {victim.proc.name} (leads {led} partitions) with kill -9 for "
            f"{BROKER_DOWN_S:.0f} s"
        )
        fault_at = time.monotonic()
        kill9(victim)
        time.sleep(BROKER_DOWN_S)
        back_from = time.monotonic()
        rig.heal()
        time.sleep(AFTER_S)
        out.tally = load.finish(fault_at, DRAIN_S)
        during = [r for r in load.replies() if fault_at <= r.at < back_from]
    out.notes += [
        f"{victim.proc.name} led {led} of llmq's partitions; down {BROKER_DOWN_S:.0f} s",
        f"{len(during)} replies while it was down",
    ]
    if not during:
        out.broken("nothing was answered while one broker of three was down")


def streams_join(rig: Rig, out: Outcome) -> None:
    """A second stream-processor instance joins under load, takes a share of the partitions,
    then gets SIGTERM and leaves; the first takes them back."""
    second = rig.stack.streams(2)

    def handled() -> float:
        return metric(second.endpoint, "llmq_streams_requests_total", outcome="admitted") or 0.0

    try:
        with Load(rig.bootstrap, out.scenario) as load:
            load.steady(rig.rate)
            out.reached(load.wait_for(lambda: load.answered() >= 3, BUSY_WAIT_S), "a warm stack")
            rig.say(f"starting a second stream processor, {second.proc.name}")
            fault_at = time.monotonic()
            rig.stack.start(second, say=lambda line: rig.say(f"  {line}"))
            joined_s = time.monotonic() - fault_at
            out.reached(wait_until(lambda: handled() >= 3, BUSY_WAIT_S), "a share for the second")
            time.sleep(JOINED_S * rig.scale)
            admitted = handled()
            rig.say(f"SIGTERM to {second.proc.name} after it admitted {admitted:.0f} requests")
            left_s = rig.stop(second)
            time.sleep(AFTER_S)
            out.tally = load.finish(fault_at, DRAIN_S)
    finally:
        second.proc.stop()
    left = (
        "was not running at its SIGTERM"
        if left_s is None
        else f"left {left_s:.1f} s after its SIGTERM"
    )
    out.notes.append(
        f"{second.proc.name} ready {joined_s:.0f} s after it started, admitted "
        f"{admitted:.0f} requests, {left}"
    )
    if admitted == 0:
        out.broken(f"{second.proc.name} took no share of the partitions")
    if left_s is None:
        out.broken(f"{second.proc.name} was not running when its SIGTERM came")
    elif left_s >= second.proc.stop_timeout_s:
        out.broken(f"{second.proc.name} did not leave by itself: it was killed")


def autoscale_down(rig: Rig, out: Outcome) -> None:
    """The autoscaler starts a second worker for a burst, then stops it (SIGTERM, so it
    drains) once the burst's interactive part is done and its batch part, whose drain
    target is long, needs one worker. A tail, sent while the autoscaler's target is one and
    little is left, is still being answered when the down-scale window lets it go."""
    auto = rig.stack.autoscaler(AUTOSCALE)
    extra = rig.stack.replica(rig.model, 2)
    earlier = starts(extra.proc)  # scale-down ran this replica before
    try:
        rig.stack.start(auto, say=lambda line: rig.say(f"  {line}"))
        with Load(rig.bootstrap, out.scenario) as load:
            load.steady(min(rig.rate, STEADY_RATE))
            rig.say(
                f"a burst of {URGENT_PART} interactive requests of {URGENT_TOKENS} tokens "
                f"and {BATCH_PART} batch requests of {BATCH_TOKENS}"
            )
            fault_at = time.monotonic()
            parts = [
                (URGENT_PART, URGENT_TOKENS, Lane.INTERACTIVE),
                (BATCH_PART, BATCH_TOKENS, Lane.BATCH),
            ]

            def ask(tokens: int, lane: Lane) -> str:
                return load.send(_long(load, tokens, lane=lane, cache=CacheMode.OFF))

            burst = [ask(tokens, lane) for size, tokens, lane in parts for _ in range(size)]
            # 1) Up: the second worker starts, joins its group and takes work (its first
            # generations finish together minutes later on a slow engine).
            served = wait_until(
                lambda: (
                    rig.in_flight(extra) >= 1
                    or (metric(extra.endpoint, GENERATIONS, outcome="ok") or 0) >= 1
                ),
                SCALE_WAIT_S,
            )
            rig.say(f"{extra.proc.name} serves; waiting for the autoscaler to take it away")
            # 2) Down: a tail while the autoscaler's target is one and little is left; what
            # the extra worker holds until the autoscaler wants it no more, then its exit.
            seen = {"in_flight": 0.0, "left": 0.0}
            tails: list[str] = []  # the tail's requests, over its rounds

            def answered() -> float:
                return float(sum(load.first_reply(c) is not None for c in [*burst, *tails]))

            def gone() -> bool:
                if extra.proc.pid() is None:
                    return True
                now = metrics(auto.endpoint, DESIRED, TARGET, model=rig.model.name)
                if now is not None and now[DESIRED] >= 2:  # one moment's figures (0: absent)
                    left = len(burst) + len(tails) - answered()
                    rounds = len(tails) // TAIL_PART
                    if now[TARGET] == 1 and left < TAIL_PART / 2 and rounds < TAIL_ROUNDS:
                        rig.say(f"the autoscaler's target is one worker, {left:.0f} left: a tail")
                        tails.extend(ask(BATCH_TOKENS, Lane.BATCH) for _ in range(TAIL_PART))
                        left += TAIL_PART  # just sent: none of it answered yet
                    seen["in_flight"] = rig.in_flight(extra)
                    seen["left"] = left
                return False

            down = served and wait_moving(gone, answered, SHRINK_WAIT_S)
            out.tally = load.finish(fault_at, DRAIN_S)
    finally:
        auto.proc.stop()
        extra.proc.stop()
    runs = starts(extra.proc) - earlier
    said = log_lines(extra.proc, run=earlier + 1, lines=200)  # its first run here
    out.notes.append(
        f"the autoscaler stopped {extra.proc.name} with {seen['in_flight']:.0f} in flight and "
        f"{seen['left']:.0f} of the burst unanswered (a tail of {len(tails)} included)"
    )
    out.findings += _scale_down_findings(
        extra.proc.name,
        served=served,
        down=down,
        left=seen["left"],
        drained=drained(said),
        starts=runs,
    )
    if runs > 1:  # why each start: the decision logged just before it
        decided = _started_because(log_lines(auto.proc, lines=100_000), extra.proc.name)
        out.timing("the decisions behind each start: " + " | ".join(decided))


def _started_because(said: list[str], name: str) -> list[str]:
    """Each start of `name` in the autoscaler's log, as 'HH:MM:SS <the decision before it>'."""
    return [
        f"{line[11:19]} {before.split(': ', 1)[-1]}"
        for before, line in pairwise(said)
        if f"starting {name} " in line
    ]


def _scale_down_findings(
    name: str, *, served: bool, down: bool, left: float, drained: bool, starts: int
) -> list[Finding]:
    """What went wrong with the extra worker `name`: it never served, never left, left
    only after the burst, or was started again (the autoscaler's decisions follow the
    machine's speed: timing), or it was killed rather than drained (broken)."""
    found = []
    if not served:
        found.append(Finding(Kind.TIMING, f"the autoscaler did not bring {name} into service"))
    elif not down:
        found.append(Finding(Kind.TIMING, f"the autoscaler did not take {name} away"))
    elif left == 0:
        text = "the scale-down came after the burst: all of it was answered"
        found.append(Finding(Kind.TIMING, text))
    if down and not drained:
        found.append(Finding(Kind.BROKEN, f"{name} did not drain and exit by itself"))
    if starts > 1:
        text = f"the autoscaler started {name} {starts} times (flapping)"
        found.append(Finding(Kind.TIMING, text))
    return found


def crash_loop(rig: Rig, out: Outcome) -> None:
    """A request whose generation takes its worker down every time (kill -9 as soon as it
    streams), among a steady load: after LLMQ_MAX_STARTS starts it is dead-lettered and
    answered crash_loop; what ran beside it is answered."""
    worker = rig.component("worker")
    deltas, dlq = tail(rig.bootstrap, TOKENS), tail(rig.bootstrap, DLQ)
    kills = 0
    try:
        with Load(rig.bootstrap, out.scenario) as load:
            load.steady(rig.rate / 2)
            out.reached(load.wait_for(lambda: load.answered() >= 3, BUSY_WAIT_S), "a warm stack")
            poison = _long(load, LONG_TOKENS, stream=True)
            fault_at = time.monotonic()
            cid = load.send(poison)
            seen: set[str] = set()
            while kills <= DEFAULT_MAX_STARTS:
                if not _new_generation(deltas, cid, seen, load, DRAIN_S):
                    break  # answered: no start any more
                rig.say(f"its generation {len(seen)} streams: kill -9 of {worker.proc.name}")
                kill9(worker)
                kills += 1
                rig.heal()
            load.wait_answered([cid], DRAIN_S)
            reply = load.first_reply(cid)
            time.sleep(AFTER_S)
            out.tally = load.finish(fault_at, DRAIN_S)
            letters = _letters_of(dlq, cid, BUSY_WAIT_S)
    finally:
        deltas.close()
        dlq.close()
    code = reply.error_code if reply is not None else None
    out.notes += [
        f"{kills} workers taken down; the request's reply: {code or 'none'}",
        "dead-lettered from " + counts(Counter(h.get(HEADER_SOURCE_TOPIC, "?") for h in letters)),
    ]
    if kills != DEFAULT_MAX_STARTS:
        out.broken(f"{kills} workers went down, not LLMQ_MAX_STARTS={DEFAULT_MAX_STARTS}")
    if code != ErrorCode.CRASH_LOOP.value:
        out.broken(f"the request was answered {code or 'not at all'}, not crash_loop")
    if not letters:
        out.broken(f"its work record never reached {DLQ}")


def _long(load: Load, tokens: int, stream: bool = False, **envelope: Any) -> InferenceRequest:
    """A request that generates exactly `tokens` tokens (the end of text is ignored)."""
    request = load.request(max_tokens=tokens, **envelope)
    body = request.body.model_copy(update={"ignore_eos": True, "stream": stream})
    return request.model_copy(update={"body": body})


def _letters_of(dlq: KafkaConsumer, cid: str, wait_s: float) -> list[dict[str, str]]:
    """The headers of the DLQ records that carry `cid`, read until one came or `wait_s`
    passed."""
    found: list[dict[str, str]] = []
    deadline = time.monotonic() + wait_s
    while not found and time.monotonic() < deadline:
        for records in dlq.poll(timeout_ms=250).values():
            found += [header_map(r.headers) for r in records if cid.encode() in (r.value or b"")]
    return found


def _new_generation(
    deltas: KafkaConsumer, cid: str, seen: set[str], load: Load, wait_s: float
) -> bool:
    """Wait for a piece of a generation of `cid` not seen before (a start); False when the
    request was answered instead, or nothing came within `wait_s`."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and load.first_reply(cid) is None:
        for records in deltas.poll(timeout_ms=200).values():
            for record in records:
                try:
                    delta = TokenDelta.model_validate_json(record.value)
                except ValidationError:
                    continue
                if delta.correlation_id == cid and delta.generation not in seen:
                    seen.add(delta.generation)
                    return True
    return False

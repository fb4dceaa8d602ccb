"""Every fault scenario, with the stack it needs, in the order a full run takes them."""

from __future__ import annotations

from schemas.errors import ErrorCode
from tools.faults.batches import batch_restarts
from tools.faults.membership import (
    BROKER_DOWN_S,
    autoscale_down,
    broker_kill,
    crash_loop,
    streams_join,
)
from tools.faults.scenarios import (
    KAFKA_DOWN_S,
    OVERLOAD,
    REDIS_DOWN_S,
    Scenario,
    kafka_stop,
    overload,
    poison,
    redis_stop,
    scale_down,
    streams_kill,
    worker_kill,
)

SCENARIOS: dict[str, Scenario] = {
    "worker-kill": Scenario(
        "kill -9 of the worker mid-batch, restarted", worker_kill, frozenset({"worker"})
    ),
    "streams-kill": Scenario(
        "kill -9 of the stream processor while followers wait on a coalesced request",
        streams_kill,
        frozenset({"streams"}),
    ),
    "kafka-stop": Scenario(
        f"Kafka broker stopped for {KAFKA_DOWN_S:.0f} s under load, the stream processor "
        "stopped (SIGTERM) while it is away",
        kafka_stop,
        frozenset({"kafka", "streams"}),
        # Nothing accepted is lost and every client reconnects, but a record whose handling
        # failed while Kafka was away (its sends out of time) is answered with a retriable
        # internal_error (streams/guard.py): that depends on how long the outage lasts.
        timing_errors=frozenset({ErrorCode.INTERNAL_ERROR.value}),
    ),
    "redis-stop": Scenario(
        f"Redis stopped for {REDIS_DOWN_S:.0f} s under load", redis_stop, frozenset({"redis"})
    ),
    "scale-down": Scenario("SIGTERM of one of two workers (scale-down) under load", scale_down),
    "autoscale-down": Scenario(
        "the autoscaler adds a worker for a burst, then takes it away (SIGTERM) under load "
        "with the burst's batch part unanswered",
        autoscale_down,
        # A slow CPU may not finish a burst's generation within the model's timeout_s.
        timing_errors=frozenset({ErrorCode.ENGINE_TIMEOUT.value}),
    ),
    "crash-loop": Scenario(
        "a request whose generation takes its worker down every time (kill -9)",
        crash_loop,
        frozenset({"worker"}),
        expected_errors={ErrorCode.CRASH_LOOP.value: 1},
    ),
    "batch-restarts": Scenario(
        "kill -9 of a batch's front door, then of streams, then of the worker, mid-batch",
        batch_restarts,
        frozenset({"gateway", "streams", "worker"}),
    ),
    "poison": Scenario(
        "poison records on llmq.requests, a work topic and completions",
        poison,
        # The two poison records that carry a correlation id (scenarios._poison).
        expected_errors={ErrorCode.INVALID_REQUEST.value: 1, ErrorCode.UNKNOWN_MODEL.value: 1},
    ),
    "overload": Scenario(f"{OVERLOAD:.0f}x the service rate", overload),
    "broker-kill": Scenario(
        f"kill -9 of one of 3 brokers for {BROKER_DOWN_S:.0f} s under load",
        broker_kill,
        frozenset({"kafka", "kafka-2", "kafka-3"}),
        brokers=3,
        # As under kafka-stop: a send that outlasts the leaders' failover (30 s to ack) is
        # answered with a retriable internal_error.
        timing_errors=frozenset({ErrorCode.INTERNAL_ERROR.value}),
    ),
    "streams-join": Scenario(
        "a second stream processor joins under load, then leaves (SIGTERM); 3 brokers",
        streams_join,
        brokers=3,
    ),
}
"""Every scenario, in the order a full run takes them: those on one broker, then those on
a cluster of three (a stack of its own). Any error reply beyond a scenario's expected_errors
breaks a guarantee (RELIABILITY.md promises answers through each of these faults), unless
its code is among the scenario's timing_errors."""

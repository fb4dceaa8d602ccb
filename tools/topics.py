"""`llmq topics [--create]`: llmq's topic plan (schemas/names.py) for a catalog, made real on
a Kafka cluster. The local stack, docker-compose and the Kubernetes Job all create topics
with it, so no list of topics is copied by hand."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from kafka import KafkaAdminClient
from kafka.errors import (
    InvalidReplicationFactorError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    UnknownBrokerIdError,
)
from pydantic import Field

from llmq.settings import ClientSettings
from schemas.kafka_security import KafkaSecurity
from schemas.names import DEFAULT_PARTITIONS, TopicSpec, topic_plan
from tools import arguments

T = TypeVar("T")

IN_SYNC = 2
"""min.insync.replicas of a topic with 2 or more replicas: a record llmq's producers send
(acks=all) is acknowledged once two brokers hold it, so losing one loses nothing; with 3
replicas it stops nothing either."""


class TopicSettings(ClientSettings):
    """Where the topics go, how many partitions and how many replicas they get."""

    partitions: int = Field(default=DEFAULT_PARTITIONS, ge=1, le=256)
    """Partitions of each topic but the DLQ (LLMQ_PARTITIONS); the stream processor must be
    given the same number."""
    replication_factor: int | None = Field(default=None, ge=1, le=16)
    """Replicas of each topic (LLMQ_REPLICATION_FACTOR, which the stream processor reads for
    faust's own topics, within the same bounds): 3 on a cluster of three brokers or more.
    Unset: the cluster's default.replication.factor, as the local stack sets it for its
    brokers; only the cluster knows how many it has, and a single one cannot hold 2."""


@dataclass(frozen=True)
class Outcome:
    """What `ensure_topics` found and did."""

    created: list[str]
    mismatched: dict[str, int]
    """Existing topics with another partition count than the plan's, and that count."""
    under_replicated: dict[str, int] = field(default_factory=dict)
    """Existing topics with fewer replicas than asked, and their count."""


def register(sub: Any) -> None:
    """Add `topics` to the `llmq` subcommands (argparse's private subparsers type)."""
    topics = sub.add_parser(
        "topics",
        help="print llmq's topics for the catalog; --create makes the missing ones",
        description="The topics llmq needs for the catalog (LLMQ_MODELS_FILE) with their "
        "partition counts (LLMQ_PARTITIONS). --create makes those missing at "
        "LLMQ_KAFKA_BOOTSTRAP with LLMQ_REPLICATION_FACTOR replicas (unset: the cluster's "
        "default) and, from 2 replicas, min.insync.replicas=2; it exits 1 naming an existing "
        "topic with another partition count or fewer replicas.",
    )
    topics.add_argument("--create", action="store_true", help="create the missing topics")
    topics.add_argument(
        "--timeout",
        type=arguments.positive_float,
        default=120.0,
        help="seconds to wait for the cluster",
    )
    topics.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the plan; with --create, make it real. Exit 1 if a topic has another partition
    count or fewer replicas than asked: Kafka changes neither in place (more partitions move
    keys; more replicas take a reassignment), so an operator must act, and a failed Job is seen
    where a warning in its log is not."""
    settings = TopicSettings()
    plan = topic_plan(settings.catalog().names, settings.partitions)
    if not args.create:
        for spec in plan:
            print(f"{spec.name}\t{spec.partitions}")
        return 0
    # Said at once: a cluster that is down is only known to be down at the deadline.
    print(
        f"llmq topics: waiting up to {args.timeout:g} s for Kafka at {settings.kafka_bootstrap} "
        "(the stack may be starting)",
        file=sys.stderr,
    )
    replicas = settings.replication_factor
    outcome = ensure_topics(
        settings.kafka_bootstrap,
        plan,
        settings.kafka_security(),
        timeout_s=args.timeout,
        replicas=replicas,
    )
    print(f"created {len(outcome.created)} of {len(plan)} topics: {', '.join(outcome.created)}")
    planned = {spec.name: spec.partitions for spec in plan}
    for name, count in outcome.mismatched.items():
        print(f"llmq topics: {name} has {count} partitions, the plan {planned[name]}")
    for name, count in outcome.under_replicated.items():
        print(
            f"llmq topics: {name} has {count} replicas, LLMQ_REPLICATION_FACTOR {replicas}: "
            "Kafka adds replicas only by a reassignment (kafka-reassign-partitions.sh)"
        )
    return 1 if outcome.mismatched or outcome.under_replicated else 0


def ensure_topics(
    bootstrap: str,
    plan: Sequence[TopicSpec],
    security: KafkaSecurity | None = None,
    timeout_s: float = 60.0,
    replicas: int | None = None,
) -> Outcome:
    """Create the planned topics that are missing, with `replicas` replicas each (None: the
    cluster's default), waiting for the cluster to answer up to `timeout_s`. Name those that
    exist with another partition count (faust's agents refuse them, and Kafka can only add
    partitions, which moves keys between them; with any such topic none is created, as a
    new one would have a count the others lack) and, with `replicas` given, those with
    fewer replicas."""
    deadline = time.monotonic() + timeout_s
    admin = _connect(bootstrap, security or KafkaSecurity(), timeout_s)
    try:
        found = {t["name"]: t["partitions"] for t in _patiently(deadline, admin.describe_topics)}
        mismatched = {
            spec.name: len(found[spec.name])
            for spec in plan
            if spec.name in found and len(found[spec.name]) != spec.partitions
        }
        under = {} if replicas is None else _under_replicated(found, plan, replicas)
        missing = [] if mismatched else [spec for spec in plan if spec.name not in found]
        for spec in missing:
            try:
                _patiently(deadline, partial(_create, admin, spec, replicas), _creatable)
            except KafkaError as exc:
                asked = "the cluster's default" if replicas is None else str(replicas)
                raise RuntimeError(
                    f"Kafka at {bootstrap} refused to create {spec.name} with {asked} "
                    f"replicas: {type(exc).__name__}"
                ) from exc
        if missing:
            # Wait until the broker asked knows each topic with a leader for every partition;
            # the others learn of it in their own time (llmq.client.tail waits for that).
            try:
                admin.wait_for_topics([spec.name for spec in plan], timeout_ms=timeout_s * 1000)
            except KafkaTimeoutError as exc:
                names = ", ".join(spec.name for spec in missing)
                raise RuntimeError(f"Kafka at {bootstrap} did not create {names}: {exc}") from exc
    finally:
        admin.close()
    return Outcome([spec.name for spec in missing], mismatched, under)


def _create(admin: KafkaAdminClient, spec: TopicSpec, replicas: int | None) -> None:
    """Create `spec`'s topic, one request each so that each topic's refusal is its own; one
    created meanwhile by another process is fine."""
    options: dict[str, Any] = {
        "num_partitions": spec.partitions,
        "replication_factor": -1 if replicas is None else replicas,  # -1: the cluster's default
    }
    if replicas is not None and replicas >= IN_SYNC:
        options["configs"] = {"min.insync.replicas": str(IN_SYNC)}
    with contextlib.suppress(TopicAlreadyExistsError):
        admin.create_topics({spec.name: options}, raise_errors=True)


def _under_replicated(
    found: dict[str, list[dict[str, Any]]], plan: Sequence[TopicSpec], replicas: int
) -> dict[str, int]:
    """The planned topics that exist with fewer than `replicas` replicas (on their least
    replicated partition), and that count."""
    counts = {
        spec.name: min((len(p["replica_nodes"]) for p in found[spec.name]), default=0)
        for spec in plan
        if spec.name in found
    }
    return {name: count for name, count in counts.items() if count < replicas}


def _young(exc: KafkaError) -> bool:
    """A young cluster's brokers are still meeting: the client has not heard of the broker it
    must ask yet, or that one is not ready."""
    return exc.retriable or isinstance(exc, UnknownBrokerIdError)


def _creatable(exc: KafkaError) -> bool:
    """Waiting may also mend too few brokers for the replicas asked: a young cluster's are
    still registering with its controller."""
    return _young(exc) or isinstance(exc, InvalidReplicationFactorError)


def _patiently(
    deadline: float, call: Callable[[], T], mendable: Callable[[KafkaError], bool] = _young
) -> T:
    """`call()`, again every half second while it fails in a way waiting can mend, until
    `deadline`."""
    while True:
        try:
            return call()
        except KafkaError as exc:
            if not mendable(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _connect(bootstrap: str, security: KafkaSecurity, timeout_s: float) -> KafkaAdminClient:
    deadline = time.monotonic() + timeout_s

    def admin() -> KafkaAdminClient:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="llmq-admin",
            # kafka-python's own bound (30 s) held a silent broker's caller past timeout_s
            bootstrap_timeout_ms=max(100, int((deadline - time.monotonic()) * 1000)),
            **security.client_kwargs(),
        )

    try:
        return _patiently(deadline, admin, mendable=lambda _: True)
    except KafkaError as exc:
        raise RuntimeError(
            f"Kafka at {bootstrap} ({security.describe()}) did not answer within "
            f"{timeout_s:.0f} s: {exc}"
        ) from exc

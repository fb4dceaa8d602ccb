"""`llmq topics [--create]`: llmq's topic plan (schemas/names.py) for a catalog, made real on
a Kafka cluster. The local stack, docker-compose and the Kubernetes Job all create topics
with it, so no list of topics is copied by hand."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, KafkaTimeoutError, UnknownBrokerIdError
from pydantic import Field

from llmq.settings import ClientSettings
from schemas.kafka_security import KafkaSecurity
from schemas.names import DEFAULT_PARTITIONS, TopicSpec, topic_plan
from tools import arguments

T = TypeVar("T")


class TopicSettings(ClientSettings):
    """Where the topics go and how many partitions they get."""

    partitions: int = Field(default=DEFAULT_PARTITIONS, ge=1, le=256)
    """Partitions of each topic but the DLQ (LLMQ_PARTITIONS); the stream processor must be
    given the same number."""


@dataclass(frozen=True)
class Outcome:
    """What `ensure_topics` found and did."""

    created: list[str]
    mismatched: dict[str, int]
    """Existing topics with another partition count than the plan's, and that count."""


def register(sub: Any) -> None:
    """Add `topics` to the `llmq` subcommands (argparse's private subparsers type)."""
    topics = sub.add_parser(
        "topics",
        help="print llmq's topics for the catalog; --create makes the missing ones",
        description="The topics llmq needs for the catalog (LLMQ_MODELS_FILE) with their "
        "partition counts (LLMQ_PARTITIONS). --create makes those missing at "
        "LLMQ_KAFKA_BOOTSTRAP with the cluster's default replication factor.",
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
    """Print the plan; with --create, make it real. Exit 1 if a topic's count is wrong."""
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
    outcome = ensure_topics(
        settings.kafka_bootstrap, plan, settings.kafka_security(), timeout_s=args.timeout
    )
    print(f"created {len(outcome.created)} of {len(plan)} topics: {', '.join(outcome.created)}")
    planned = {spec.name: spec.partitions for spec in plan}
    for name, count in outcome.mismatched.items():
        print(f"llmq topics: {name} has {count} partitions, the plan {planned[name]}")
    return 1 if outcome.mismatched else 0


def ensure_topics(
    bootstrap: str,
    plan: Sequence[TopicSpec],
    security: KafkaSecurity | None = None,
    timeout_s: float = 60.0,
) -> Outcome:
    """Create the planned topics that are missing (waiting for the cluster to answer, up to
    `timeout_s`), and name those that exist with another partition count: faust's agents
    refuse them, and Kafka can only add partitions, which moves keys between them. With any
    such topic, none is created: a new one would have a count the others lack."""
    deadline = time.monotonic() + timeout_s
    admin = _connect(bootstrap, security or KafkaSecurity(), timeout_s)
    try:
        existing = _patiently(deadline, lambda: _partitions(admin))
        mismatched = {
            spec.name: existing[spec.name]
            for spec in plan
            if spec.name in existing and existing[spec.name] != spec.partitions
        }
        missing = [] if mismatched else [spec for spec in plan if spec.name not in existing]
        if missing:
            specs = {
                spec.name: {"num_partitions": spec.partitions, "replication_factor": -1}
                for spec in missing
            }
            # raise_errors=False: one created meanwhile by another process is fine.
            _patiently(deadline, lambda: admin.create_topics(specs, raise_errors=False))
            # Wait until the broker asked knows each topic with a leader for every partition;
            # the others learn of it in their own time (llmq.client.tail waits for that).
            try:
                admin.wait_for_topics([spec.name for spec in plan], timeout_ms=timeout_s * 1000)
            except KafkaTimeoutError as exc:
                names = ", ".join(spec.name for spec in missing)
                raise RuntimeError(f"Kafka at {bootstrap} did not create {names}: {exc}") from exc
    finally:
        admin.close()
    return Outcome([spec.name for spec in missing], mismatched)


def _young(exc: KafkaError) -> bool:
    """A young cluster's brokers are still meeting: the client has not heard of the broker it
    must ask yet, or that one is not ready."""
    return exc.retriable or isinstance(exc, UnknownBrokerIdError)


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


def _partitions(admin: KafkaAdminClient) -> dict[str, int]:
    return {t["name"]: len(t["partitions"]) for t in admin.describe_topics()}


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

"""`llmq topics --create` gives llmq's topics LLMQ_REPLICATION_FACTOR replicas: the Job
created them with the cluster's default (1 on a stock Kafka), so one lost broker took a
third of the partitions offline and their acknowledged records with its disk."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import InvalidReplicationFactorError, TopicAlreadyExistsError

from llmq.cli import main
from schemas.catalog import Catalog
from schemas.names import DEFAULT_PARTITIONS, REQUESTS, RESULTS, TopicSpec, topic_plan
from streams.settings import StreamSettings
from tools import topics
from tools.stack import stack as stack_module
from tools.stack.settings import LocalSettings
from tools.stack.stack import Component, LocalStack
from tools.topics import Outcome, TopicSettings, ensure_topics

pytestmark = pytest.mark.timeout(60)


class FakeAdmin:
    """A cluster's admin client: topics that exist with their partitions' replica counts, and
    what it was asked to create (by name, the options of each request)."""

    def __init__(self, existing: dict[str, list[int]], refusals: list[Exception]) -> None:
        self.existing = existing
        self.refusals = refusals
        self.asked: dict[str, dict[str, Any]] = {}

    def describe_topics(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "partitions": [{"replica_nodes": list(range(r))} for r in replicas]}
            for name, replicas in self.existing.items()
        ]

    def create_topics(self, specs: dict[str, dict[str, Any]], raise_errors: bool) -> None:
        assert raise_errors  # a refusal must not pass unseen
        if self.refusals:
            raise self.refusals.pop(0)
        self.asked.update(specs)

    def wait_for_topics(self, names: list[str], timeout_ms: float) -> None:
        pass

    def close(self) -> None:
        pass


def _cluster(
    monkeypatch: pytest.MonkeyPatch,
    existing: dict[str, list[int]] | None = None,
    refusals: list[Exception] | None = None,
) -> FakeAdmin:
    admin = FakeAdmin(existing or {}, refusals or [])
    monkeypatch.setattr(topics, "_connect", lambda *_: admin)
    return admin


@pytest.fixture(autouse=True)
def _no_llmq_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith("LLMQ_"):
            monkeypatch.delenv(name)


def _plan() -> list[TopicSpec]:
    return topic_plan(Catalog.builtin().names, DEFAULT_PARTITIONS)


def test_the_replication_factor_set_is_asked_for_with_two_in_sync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """configmap.yaml's LLMQ_REPLICATION_FACTOR: "3" reached faust's changelog alone."""
    monkeypatch.setenv("LLMQ_REPLICATION_FACTOR", "3")
    admin = _cluster(monkeypatch)
    assert main(["topics", "--create", "--timeout", "5"]) == 0
    assert set(admin.asked) == {spec.name for spec in _plan()}
    for options in admin.asked.values():
        assert options["replication_factor"] == 3
        assert options["configs"] == {"min.insync.replicas": "2"}


def test_unset_the_clusters_default_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-compose's and a plain `llmq topics --create`'s single broker: its default (1)."""
    admin = _cluster(monkeypatch)
    assert main(["topics", "--create", "--timeout", "5"]) == 0
    assert admin.asked
    for options in admin.asked.values():
        assert options["replication_factor"] == -1
        assert "configs" not in options


def test_one_replica_asks_no_second_in_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """min.insync.replicas above the replicas would refuse every acks=all write."""
    admin = _cluster(monkeypatch)
    ensure_topics("fake:9092", [TopicSpec(REQUESTS, 4)], replicas=1)
    assert admin.asked == {REQUESTS: {"num_partitions": 4, "replication_factor": 1}}


def test_an_existing_topic_with_fewer_replicas_is_named_and_fails_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Topics the Job made before with the cluster's default keep their one replica: Kafka
    adds replicas only by a reassignment, so the operator is told, not reassured. The
    missing ones are still created with the replicas asked."""
    monkeypatch.setenv("LLMQ_REPLICATION_FACTOR", "3")
    plan = _plan()
    existing = {REQUESTS: [3, 1, 3, 3], RESULTS: [3] * DEFAULT_PARTITIONS}
    admin = _cluster(monkeypatch, existing)
    assert main(["topics", "--create", "--timeout", "5"]) == 1
    [told] = [line for line in capsys.readouterr().out.splitlines() if "replicas" in line]
    assert told.startswith(f"llmq topics: {REQUESTS} has 1 replicas, LLMQ_REPLICATION_FACTOR 3")
    assert set(admin.asked) == {spec.name for spec in plan} - set(existing)


def test_replicas_are_compared_only_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    _cluster(monkeypatch, {REQUESTS: [1] * 4})
    plan = [TopicSpec(REQUESTS, 4)]
    assert ensure_topics("fake:9092", plan) == Outcome([], {})
    assert ensure_topics("fake:9092", plan, replicas=2) == Outcome([], {}, {REQUESTS: 1})


def test_a_young_cluster_is_given_time_to_register_the_brokers_for_the_replicas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = _cluster(monkeypatch, refusals=[InvalidReplicationFactorError("1 registered")])
    ensure_topics("fake:9092", [TopicSpec(REQUESTS, 4)], replicas=3, timeout_s=10)
    assert admin.asked[REQUESTS]["replication_factor"] == 3


def test_more_replicas_than_brokers_fails_naming_the_topic_and_the_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused with raise_errors=False, the Job waited out its timeout for topics that were
    never made, and said only that."""
    _cluster(monkeypatch, refusals=[InvalidReplicationFactorError("1 registered")] * 100)
    with pytest.raises(RuntimeError) as refused:
        ensure_topics("fake:9092", [TopicSpec(REQUESTS, 4)], replicas=3, timeout_s=0.5)
    assert f"refused to create {REQUESTS} with 3 replicas" in str(refused.value)
    assert "InvalidReplicationFactorError" in str(refused.value)


def test_a_topic_created_meanwhile_by_another_process_is_fine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _cluster(monkeypatch, refusals=[TopicAlreadyExistsError(REQUESTS)])
    plan = [TopicSpec(REQUESTS, 4)]
    assert ensure_topics("fake:9092", plan, replicas=3) == Outcome([REQUESTS], {})


def test_the_stream_processor_reads_the_variable_within_the_same_bounds() -> None:
    """One ConfigMap value for both: one the topics accept, the stream processor does too."""
    mine = TopicSettings.model_fields["replication_factor"].metadata
    assert mine == StreamSettings.model_fields["replication_factor"].metadata


def test_the_local_stack_takes_its_brokers_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`llmq local up` sets default.replication.factor to its brokers (up to 3): a single
    broker is not asked for the 3 an operator's LLMQ_REPLICATION_FACTOR names elsewhere."""
    monkeypatch.setenv("LLMQ_REPLICATION_FACTOR", "3")
    stack = LocalStack(LocalSettings(state_dir=tmp_path, autoscale=False))
    asked: list[dict[str, Any]] = []

    def start_all(comps: list[Component], say: Callable[[str], None] = print) -> None:
        pass

    def ensure(*args: Any, **kwargs: Any) -> Outcome:
        asked.append(kwargs)
        return Outcome([], {})

    monkeypatch.setattr(stack, "_prepare_kafka", lambda: None)
    monkeypatch.setattr(stack, "start_all", start_all)
    monkeypatch.setattr(stack, "start", lambda *_: None)
    monkeypatch.setattr(stack_module, "ensure_topics", ensure)
    stack.up(say=lambda _: None)
    assert asked == [{}]

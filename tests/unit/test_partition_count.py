"""`llmq local up` with LLMQ_PARTITIONS changed on a stack whose topics exist: it started the
stream processor with a count its topics do not have. Now it refuses, past the brokers only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from schemas.names import DLQ, REQUESTS, RESULTS, TopicSpec
from tools import topics
from tools.stack import stack as stack_module
from tools.stack.settings import LocalSettings
from tools.stack.stack import Component, LocalStack, StackError
from tools.topics import Outcome, ensure_topics

pytestmark = pytest.mark.timeout(60)


class FakeAdmin:
    """A cluster's admin client whose topics exist with the given partition counts."""

    def __init__(self, existing: dict[str, int]) -> None:
        self.existing = existing
        self.created: list[str] = []

    def describe_topics(self) -> list[dict[str, Any]]:
        return [{"name": n, "partitions": list(range(c))} for n, c in self.existing.items()]

    def create_topics(self, specs: dict[str, dict[str, int]], raise_errors: bool) -> None:
        self.created += specs

    def wait_for_topics(self, names: list[str], timeout_ms: float) -> None:
        pass

    def close(self) -> None:
        pass


def _cluster(monkeypatch: pytest.MonkeyPatch, existing: dict[str, int]) -> FakeAdmin:
    admin = FakeAdmin(existing)
    monkeypatch.setattr(topics, "_connect", lambda *_: admin)
    return admin


def test_topics_with_another_count_are_named_and_none_is_created(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A topic created beside them would have the new count, so setting LLMQ_PARTITIONS back
    would leave that one mismatched instead."""
    admin = _cluster(monkeypatch, {REQUESTS: 4, DLQ: 1})
    plan = [TopicSpec(REQUESTS, 8), TopicSpec(RESULTS, 8), TopicSpec(DLQ, 1)]
    assert ensure_topics("fake:9092", plan) == Outcome([], {REQUESTS: 4})
    assert admin.created == []


def test_missing_topics_are_created_when_the_others_agree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = _cluster(monkeypatch, {REQUESTS: 4})
    plan = [TopicSpec(REQUESTS, 4), TopicSpec(RESULTS, 4)]
    assert ensure_topics("fake:9092", plan) == Outcome([RESULTS], {})
    assert admin.created == [RESULTS]


def test_up_refuses_topics_with_another_count_before_starting_past_the_brokers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stack = LocalStack(LocalSettings(state_dir=tmp_path, partitions=8))
    started: list[str] = []

    def start_all(comps: list[Component], say: Callable[[str], None] = print) -> None:
        started.extend(comp.proc.name for comp in comps)

    monkeypatch.setattr(stack, "_prepare_kafka", lambda: None)
    monkeypatch.setattr(stack, "start_all", start_all)
    mismatched = {REQUESTS: 4, RESULTS: 4}
    monkeypatch.setattr(stack_module, "ensure_topics", lambda *_: Outcome([], mismatched))
    with pytest.raises(StackError) as refused:
        stack.up(say=lambda _: None)
    assert started == ["kafka"]
    [line] = str(refused.value).splitlines()
    assert f"{REQUESTS}, {RESULTS} have 4 partitions, but LLMQ_PARTITIONS is 8" in line
    assert "set LLMQ_PARTITIONS=4 again" in line
    assert f"`llmq local down` and delete {tmp_path}" in line


def test_up_goes_on_when_the_topics_have_the_count(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stack = LocalStack(LocalSettings(state_dir=tmp_path, autoscale=False))
    started: list[str] = []

    def start_all(comps: list[Component], say: Callable[[str], None] = print) -> None:
        started.extend(comp.proc.name for comp in comps)

    monkeypatch.setattr(stack, "_prepare_kafka", lambda: None)
    monkeypatch.setattr(stack, "start_all", start_all)
    monkeypatch.setattr(stack_module, "ensure_topics", lambda *_: Outcome([], {}))
    stack.up(say=lambda _: None)
    assert started[:3] == ["kafka", "redis", "streams"] and started[-1] == "gateway"

"""An answer reached by a fallback from a failed engine answers its request and copies but
fills no cache (the failure passes; the first model answers the next copy), while one reached
past a model whose context cannot take the prompt, a lasting condition, is cached."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.catalog import Catalog
from schemas.errors import FALLBACK_CODES, ErrorCode
from schemas.result import CacheStatus
from schemas.route import Route
from schemas.work import WorkItem
from streams.semantic import SemanticHit
from tests.unit.stages import TIERED, Pipeline, completion, raw_request, result_of

pytestmark = pytest.mark.timeout(60)

WIDER = Catalog.model_validate(
    {
        "default": "small",
        "models": [
            {"name": "small", "source": "/m/small", "max_model_len": 1024, "fallback": ["wide"]},
            {"name": "wide", "source": "/m/wide", "max_model_len": 8192},
        ],
    }
)
"""small falls back to wide, whose context is larger."""


class Similar:
    """A semantic cache that never hits and records the fingerprints it learns."""

    def __init__(self) -> None:
        self.added: list[str] = []

    async def lookup(self, scope: str, text: str) -> SemanticHit | None:
        return None

    async def add(self, scope: str, text: str, fingerprint: str) -> None:
        self.added.append(fingerprint)

    async def forget(self, scope: str, fingerprint: str) -> None:
        pass


def _ask(harness: Pipeline, cid: str, **body: Any) -> WorkItem | None:
    """The same deterministic request: the work it sent, or None (answered or followed)."""
    harness.send.sent.clear()
    harness.on_request(None, raw_request(cid=cid, temperature=0, **body))
    work = [s for s in harness.send.sent if s.topic.startswith("llmq.work.")]
    return None if not work else WorkItem.model_validate_json(work[-1].value)


def _handed_on(harness: Pipeline, work: WorkItem, code: ErrorCode) -> WorkItem:
    """The work `work`'s failure with `code` is sent on as."""
    harness.send.sent.clear()
    harness.on_completion(completion(work, None, code))
    [sent] = harness.send.sent
    harness.send.sent.clear()
    return WorkItem.model_validate_json(sent.value)


@pytest.mark.parametrize("code", sorted(FALLBACK_CODES))
def test_the_answer_of_a_fallback_from_a_failed_engine_is_not_cached(code: ErrorCode) -> None:
    similar = Similar()
    harness = Pipeline(catalog=TIERED, similar=similar)
    work = _ask(harness, "t-1", model="small")
    assert work is not None and work.model == "small"
    assert _ask(harness, "t-2", model="small") is None, "a copy follows it"
    fallback = _handed_on(harness, work, code)
    assert fallback.model == "backup"
    assert fallback.route.fell_back and fallback.route.failed_over
    harness.on_completion(completion(fallback, "Backup's answer"))
    results = {r.correlation_id: r for r in map(result_of, harness.send.sent)}
    assert {cid: (r.text, r.model_used) for cid, r in results.items()} == {
        "t-1": ("Backup's answer", "backup"),
        "t-2": ("Backup's answer", "backup"),
    }
    assert (harness.store.answers, similar.added) == ({}, [])
    # small is well again: the same request is small's to answer, not a cache's.
    again = _ask(harness, "t-3", model="small")
    assert again is not None and again.model == "small"


def test_a_fallback_once_a_model_failed_stays_uncached_past_an_escalation() -> None:
    """The flag lasts the route: what comes after the failure came because of it."""
    failed = Route(requested="auto", chain=["a", "b", "c"]).advance(escalated=False, failed=True)
    later = failed.advance(escalated=True)
    assert (later.tried, later.escalated, later.failed_over) == (["a", "b"], True, True)


def test_the_answer_of_a_fallback_past_a_prompt_too_large_is_cached() -> None:
    """The same prompt is as large another time: the wider model would answer it again."""
    similar = Similar()
    harness = Pipeline(catalog=WIDER, similar=similar)
    work = _ask(harness, "w-1")
    assert work is not None and work.model == "small"
    fallback = _handed_on(harness, work, ErrorCode.PROMPT_TOO_LARGE)
    assert fallback.model == "wide"
    assert fallback.route.fell_back and not fallback.route.failed_over
    harness.on_completion(completion(fallback, "Wide answer"))
    assert harness.store.answers[work.fingerprint].choices[0].message.content == "Wide answer"
    assert similar.added == [work.fingerprint]
    assert _ask(harness, "w-2") is None
    [hit] = harness.send.sent
    assert (result_of(hit).text, result_of(hit).cache) == ("Wide answer", CacheStatus.EXACT)


def test_the_answer_of_a_route_moved_on_at_admission_is_cached() -> None:
    """max_tokens past small's context: admission starts the route at wide (fell_back)."""
    harness = Pipeline(catalog=WIDER)
    work = _ask(harness, "w-1", max_tokens=2048)
    assert work is not None and work.model == "wide"
    assert work.route.fell_back and not work.route.failed_over
    harness.on_completion(completion(work, "Wide answer"))
    assert harness.store.answers[work.fingerprint].choices[0].message.content == "Wide answer"


def test_a_route_written_before_the_flag_reads_as_not_failed_over() -> None:
    """A record of an older writer: its answer is cached, as that writer would."""
    written = {"requested": "small", "chain": ["small", "backup"], "tried": ["small"]}
    route = Route.model_validate_json(json.dumps(written | {"fell_back": True}))
    assert route.fell_back and not route.failed_over

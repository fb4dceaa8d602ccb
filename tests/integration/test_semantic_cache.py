"""The semantic cache against a real Redis with the real embedding model."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
import torch
from transformers import AutoModel, AutoTokenizer

from schemas.names import REDIS_SEMANTIC_PREFIX
from schemas.request import InferenceRequest
from streams.embedder import (
    DIMENSIONS,
    HEAD_TOKENS,
    MAX_TOKENS,
    Embedder,
    default_model_dir,
    head_and_tail,
)
from streams.semantic import (
    CANDIDATES,
    DEFAULT_THRESHOLD,
    LENIENT_FALSE_HIT_BOUND,
    SemanticCache,
    semantic_key,
)
from streams.semantic_guard import ADDITION_SIMILARITY, same_question
from tools.bench.semantic_quality import PAIRS as LABELLED
from tools.bench.semantic_quality import load
from tools.intervals import wilson
from tools.stack.ports import free_block

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PAIRS = Path(__file__).parents[1] / "data" / "paraphrases.jsonl"
PARAPHRASE_HIT_FLOOR = 0.25
"""Measured 0.293 (22 of 75) with the strict guard at the default threshold; a quality gate,
not a target."""


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, without persistence."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (deploy/install.sh installs it)")
    port = free_block(1)
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


Scenario = Callable[[Callable[..., SemanticCache], "aioredis.Redis"], Awaitable[None]]


def _run(redis_url: str, embedder: Embedder, scenario: Scenario) -> None:
    """Run `scenario` with a cache factory (one cache = one stream-processor instance)."""

    async def main() -> None:
        async with _client(redis_url) as client:
            await client.flushdb()

            def cache(**options: Any) -> SemanticCache:
                return SemanticCache(client, embedder, DEFAULT_THRESHOLD, **options)

            await scenario(cache, client)

    asyncio.run(main())


@asynccontextmanager
async def _client(url: str) -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = aioredis.Redis.from_url(url, socket_timeout=5)
    try:
        yield client
    finally:
        await client.connection_pool.disconnect()


def _scope(tenant: str = "acme") -> str:
    request = InferenceRequest.model_validate(
        {
            "correlation_id": "c-1",
            "tenant": tenant,
            "body": {"messages": [{"role": "user", "content": "?"}], "temperature": 0},
        }
    )
    key = semantic_key(request, "smollm2-135m")
    assert key is not None
    return key[0]


def test_the_embedder_gives_unit_rows(embedder: Embedder) -> None:
    vectors = embedder.embed(["What is the capital of France?", "word " * (4 * MAX_TOKENS)])
    assert vectors.shape == (2, DIMENSIONS)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, DIMENSIONS)
    again = embedder.embed(["What is the capital of France?"])[0]
    # Alone or padded in a batch: the same vector (in bfloat16, within rounding).
    if embedder.bf16:
        assert float(again @ vectors[0]) > 0.9999
    else:
        assert np.allclose(again, vectors[0], atol=1e-5)


def test_the_traced_model_gives_the_vectors_of_the_model_itself() -> None:
    """The embedder runs a TorchScript trace of the model: its vectors, for texts of other
    lengths than the one traced and padded in a batch, are those of the model run eagerly
    with transformers, pooled as sentence-transformers pools (computed here)."""
    long = " ".join(f"step {i} of the plan" for i in range(60)) + " What comes next?"
    texts = ["Hi?", "What is the capital of France?", long]
    path = str(default_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    rows = [head_and_tail(ids) for ids in tokenizer(texts)["input_ids"]]
    assert len(rows[2]) == MAX_TOKENS
    batch = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
    with torch.inference_mode():
        tokens = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (tokens * mask).sum(dim=1) / mask.sum(dim=1)
    expected = torch.nn.functional.normalize(pooled, dim=1).numpy()
    embedder = Embedder(bf16=False)
    assert embedder.traced
    assert np.allclose(embedder.embed(texts), expected, atol=1e-5)
    assert np.allclose(embedder.embed(texts[:1]), expected[:1], atol=1e-5)


@pytest.mark.parametrize("length", [MAX_TOKENS - 1, MAX_TOKENS, MAX_TOKENS + 1, 300])
def test_a_long_texts_first_and_last_tokens_are_embedded(length: int) -> None:
    ids = [101, *range(1000, 1000 + length - 2), 102]  # [CLS] ... [SEP]
    cut = head_and_tail(ids)
    if length <= MAX_TOKENS:
        assert cut == ids
        return
    assert len(cut) == MAX_TOKENS
    assert cut[:HEAD_TOKENS] == ids[:HEAD_TOKENS]
    assert cut[HEAD_TOKENS:] == ids[-(MAX_TOKENS - HEAD_TOKENS) :]
    assert (cut[0], cut[-1]) == (101, 102)


def test_bfloat16_vectors_are_float32_ones_within_a_ten_thousandth() -> None:
    texts = ["What is the capital of France?", "word " * MAX_TOKENS, "How do I sort a list?"]
    exact, fast = Embedder(bf16=False), Embedder(bf16=True)
    assert (exact.bf16, fast.bf16) == (False, True)
    assert exact.traced and fast.traced
    cosines = np.sum(exact.embed(texts) * fast.embed(texts), axis=1)
    assert np.all(cosines > 0.9999), cosines


def test_the_embedder_says_which_texts_it_cuts(embedder: Embedder) -> None:
    # Each "word" is one token, between the two that frame every text.
    assert embedder.whole("What is the capital of France?")
    assert embedder.whole("word " * (MAX_TOKENS - 2))
    assert not embedder.whole("word " * (MAX_TOKENS - 1))


def test_the_lenient_guard_takes_no_word_added_past_what_was_embedded(
    redis_url: str, embedder: Embedder
) -> None:
    """The lenient guard lets a word added to the question pass on the two questions'
    similarity; past MAX_TOKENS the embedding leaves out the middle of the text, so it
    takes none there, and still takes synonyms and what the strict guard takes."""
    cached, asked = "What is a dividend?", "What does dividend mean in investing?"
    context = "I keep a small notebook about money. " * 20  # 160 tokens

    async def scenario(cache: Callable[..., SemanticCache], _: aioredis.Redis) -> None:
        lenient = cache(additions_from=ADDITION_SIMILARITY)
        await lenient.add(_scope("short"), cached, "fp-short")
        await lenient.add(_scope("long"), context + cached, "fp-long")
        often, frequently = "How often should I rebalance?", "How frequently should I rebalance?"
        await lenient.add(_scope("long"), context + often, "fp-often")
        hit = await lenient.lookup(_scope("short"), asked)
        assert hit is not None
        assert hit.fingerprint == "fp-short"
        assert await lenient.lookup(_scope("long"), context + asked) is None
        polite = await lenient.lookup(_scope("long"), context + "What is a dividend, please?")
        assert polite is not None
        assert polite.fingerprint == "fp-long"
        synonym = await lenient.lookup(_scope("long"), context + frequently)
        assert synonym is not None
        assert synonym.fingerprint == "fp-often"

    assert not embedder.whole(context)
    _run(redis_url, embedder, scenario)


def test_questions_after_one_long_opening_are_told_apart(
    redis_url: str, embedder: Embedder
) -> None:
    """More questions than the lookup reads candidates (CANDIDATES), each after the same
    opening longer than MAX_TOKENS: each is found, because the end of a long text is
    embedded as well as its start."""
    context = "I keep a small notebook about money. " * 20  # 160 tokens
    questions = [
        "What is a dividend?",
        "How often should I rebalance?",
        "What is an index fund?",
        "Should I pay off debt before investing?",
        "What is compound interest?",
        "How large should an emergency fund be?",
        "What is a bond?",
        "How are capital gains taxed?",
        "What is inflation?",
        "Is a Roth IRA worth it?",
    ]
    assert len(questions) > CANDIDATES and not embedder.whole(context)

    async def scenario(cache: Callable[..., SemanticCache], _: aioredis.Redis) -> None:
        semantic = cache()
        for i, question in enumerate(questions):
            await semantic.add(_scope(), context + question, f"fp-{i}")
        for i, question in enumerate(questions):
            hit = await semantic.lookup(_scope(), context + question)
            assert hit is not None and hit.fingerprint == f"fp-{i}", question

    _run(redis_url, embedder, scenario)


def test_a_paraphrase_hits_and_a_near_miss_does_not(redis_url: str, embedder: Embedder) -> None:
    async def scenario(cache: Callable[..., SemanticCache], _: aioredis.Redis) -> None:
        semantic = cache()
        scope = _scope()
        await semantic.add(scope, "What is the capital of France?", "fp-paris")
        hit = await semantic.lookup(scope, "what's the capital of france")
        assert hit is not None
        assert hit.fingerprint == "fp-paris"
        assert DEFAULT_THRESHOLD <= hit.similarity <= 1.0 + 1e-6
        assert await semantic.lookup(scope, "What is the capital of Finland?") is None
        assert await semantic.lookup(scope, "How do I reverse a list in Python?") is None

    _run(redis_url, embedder, scenario)


def test_another_tenant_never_hits(redis_url: str, embedder: Embedder) -> None:
    async def scenario(cache: Callable[..., SemanticCache], _: aioredis.Redis) -> None:
        semantic = cache()
        await semantic.add(_scope("acme"), "What is the capital of France?", "fp-acme")
        assert _scope("globex") != _scope("acme")
        assert await semantic.lookup(_scope("globex"), "What is the capital of France?") is None
        assert await cache().lookup(_scope("globex"), "What is the capital of France?") is None
        hit = await semantic.lookup(_scope("acme"), "What is the capital of France?")
        assert hit is not None
        assert hit.fingerprint == "fp-acme"

    _run(redis_url, embedder, scenario)


def test_another_instance_sees_additions_and_forgetting(redis_url: str, embedder: Embedder) -> None:
    async def scenario(cache: Callable[..., SemanticCache], _: aioredis.Redis) -> None:
        first, second = cache(refresh_s=0.2), cache(refresh_s=0.2)
        scope, question = _scope(), "How many ounces are in a pound?"
        assert await second.lookup(scope, question) is None  # mirrors the empty scope
        await first.add(scope, question, "fp-ounces")
        await asyncio.sleep(0.3)
        hit = await second.lookup(scope, "Thanks! how many ounces in a pound")
        assert hit is not None
        assert hit.fingerprint == "fp-ounces"
        await first.forget(scope, "fp-ounces")
        assert await first.lookup(scope, question) is None
        await asyncio.sleep(0.3)
        assert await second.lookup(scope, question) is None
        assert await cache().lookup(scope, question) is None  # a new instance replays it all

    _run(redis_url, embedder, scenario)


def test_each_scope_keeps_the_newest_entries(redis_url: str, embedder: Embedder) -> None:
    questions = ["Why is the sky blue?", "Who painted the Mona Lisa?", "What is an API?"]

    async def scenario(cache: Callable[..., SemanticCache], client: aioredis.Redis) -> None:
        semantic, scope = cache(max_entries=2), _scope()
        assert await semantic.lookup(scope, questions[0]) is None
        for i, question in enumerate(questions):
            await semantic.add(scope, question, f"fp{i}")
        assert await client.xlen(REDIS_SEMANTIC_PREFIX + scope) == 2
        assert 0 < await client.ttl(REDIS_SEMANTIC_PREFIX + scope) <= 24 * 3600
        for reader in (semantic, cache(max_entries=2)):
            assert await reader.lookup(scope, questions[0]) is None
            for i, question in enumerate(questions[1:], start=1):
                hit = await reader.lookup(scope, question)
                assert hit is not None
                assert hit.fingerprint == f"fp{i}"

    _run(redis_url, embedder, scenario)


def test_redis_down_is_a_miss_and_never_raises(
    embedder: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        url = f"redis://127.0.0.1:{free_block(1)}/0"  # nothing listens there
        async with _client(url) as client:
            semantic = SemanticCache(client, embedder, DEFAULT_THRESHOLD)
            await semantic.add(_scope(), "What is the capital of France?", "fp-paris")
            assert await semantic.lookup(_scope(), "What is the capital of France?") is None
            await semantic.forget(_scope(), "fp-paris")

    with caplog.at_level(logging.WARNING, logger="streams.semantic"):
        asyncio.run(main())
    assert "semantic cache unavailable" in caplog.text


def test_the_labelled_pairs_at_the_default_threshold(redis_url: str, embedder: Embedder) -> None:
    """No near-miss may hit; a share of the paraphrases must (each pair in its own scope)."""
    pairs = [json.loads(line) for line in PAIRS.read_text().splitlines()]

    async def scenario(cache: Callable[..., SemanticCache], _: aioredis.Redis) -> None:
        semantic = cache()
        hits = {True: 0, False: 0}
        for i, pair in enumerate(pairs):
            scope = f"quality-{i}"
            await semantic.add(scope, pair["a"], f"fp{i}")
            hit = await semantic.lookup(scope, pair["b"])
            hits[pair["same"]] += hit is not None
        paraphrases = sum(pair["same"] for pair in pairs)
        assert hits[False] == 0
        assert hits[True] / paraphrases >= PARAPHRASE_HIT_FLOOR

    _run(redis_url, embedder, scenario)


def test_the_lenient_guard_keeps_within_its_published_bound(embedder: Embedder) -> None:
    """LLMQ_SEMANTIC_MAX_FALSE_HIT_RATE turns the lenient guard on from
    LENIENT_FALSE_HIT_BOUND: the upper end of the 95% interval of its false-hit rate over
    the labelled near misses it was not tuned on must not exceed it, and the strict guard
    passes no labelled near miss at all."""
    pairs = [p for p in load(LABELLED) if not p["same"]]
    cached = embedder.embed([p["a"] for p in pairs])
    similarity = (cached * embedder.embed([p["b"] for p in pairs])).sum(axis=1)
    decided = list(zip(pairs, (float(s) for s in similarity), strict=True))
    above = [(p, s) for p, s in decided if s >= DEFAULT_THRESHOLD]
    strict = [p for p, s in above if same_question(p["b"], p["a"], s)]
    lenient = [p for p, s in above if same_question(p["b"], p["a"], s, ADDITION_SIMILARITY)]
    untuned = [p for p in pairs if p["split"] != "tune"]
    assert strict == []
    lenient_untuned = [p for p in lenient if p["split"] != "tune"]
    assert wilson(len(lenient_untuned), len(untuned))[1] <= LENIENT_FALSE_HIT_BOUND, lenient

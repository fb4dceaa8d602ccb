"""OpenAIEngine's requests and its reading of the answers, against the in-test server:
the fields sent, chat and text completion events, usage, and the worker's use of it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.request import ChatBody, ChatMessage
from tests.unit.openai_server import (
    BODY,
    chunk,
    collect,
    engine,
    ok,
    running,
    spec,
    status,
    stream,
    text_chunk,
    usage,
)
from workers.__main__ import engine_factory
from workers.__main__ import main as worker_main
from workers.engine import EngineStep
from workers.openai_engine import OpenAIEngine
from workers.settings import WorkerSettings

pytestmark = pytest.mark.timeout(60)


def test_streams_steps_and_takes_the_counts_from_usage() -> None:
    async def scenario() -> None:
        async with running(ok("The capital is Paris", prompt=11)) as (server, url):
            steps = await collect(engine(url))
        assert "".join(s.text for s in steps) == "The capital is Paris"
        assert sum(s.new_tokens for s in steps) == 4
        assert steps[-1].finished and steps[-1].finish_reason == "stop"
        assert steps[-1].prompt_tokens == 11
        sent = server.bodies[0]
        assert sent["model"] == "remote-model"
        assert sent["stream"] is True
        assert sent["stream_options"] == {"include_usage": True}
        assert sent["max_tokens"] == 8
        assert "priority" not in sent and "logprobs" not in sent and "ignore_eos" not in sent
        assert not {"top_k", "min_p", "repetition_penalty", "min_tokens"} & set(sent)

    asyncio.run(scenario())


def test_usage_corrects_the_count_of_chunks() -> None:
    """A chunk may carry several tokens (or none): usage is the truth when it comes."""

    async def scenario() -> None:
        reply = stream(chunk("Hello wor"), chunk("ld", finish="length"), usage(3, 5, cached=2))
        async with running(reply) as (_, url):
            steps = await collect(engine(url))
        assert sum(s.new_tokens for s in steps) == 5
        assert steps[-1].finish_reason == "length"
        assert steps[-1].cached_tokens == 2, "the server's cached prompt tokens, when it says"

    asyncio.run(scenario())


@pytest.mark.parametrize("cached", [-1, "3", 2.5])
def test_a_cached_count_that_is_not_one_is_left_out(cached: object) -> None:
    async def scenario() -> None:
        reply = stream(chunk("Hi", finish="stop"), usage(3, 1, cached=cached))
        async with running(reply) as (_, url):
            steps = await collect(engine(url))
        assert steps[-1].finish_reason == "stop" and steps[-1].cached_tokens is None

    asyncio.run(scenario())


def test_without_usage_chunks_are_counted() -> None:
    async def scenario() -> None:
        async with running(stream(chunk("a"), chunk("b"), chunk("c", finish="stop"))) as (_, url):
            steps = await collect(engine(url))
        assert sum(s.new_tokens for s in steps) == 3  # more than the text's estimate, 1
        assert steps[-1].prompt_tokens == 2  # "Say hi": 6 characters, 4 a token

    asyncio.run(scenario())


def test_a_server_without_usage_is_metered_with_estimates_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that ignores stream_options.include_usage: metered at 0 prompt tokens and a
    token per chunk, its generations would cost next to nothing, silently."""
    reply = stream(
        chunk("Paris is the capital"), chunk(" of France, and"), chunk(" its largest city.", "stop")
    )
    prompt = "What is the capital of France? Answer in one sentence."
    body = ChatBody(messages=[ChatMessage(role="user", content=prompt)], max_tokens=32)

    async def scenario() -> list[list[EngineStep]]:
        async with running(reply) as (_, url):
            eng = engine(url)
            return [await collect(eng, body) for _ in range(2)]

    for steps in asyncio.run(scenario()):
        assert steps[-1].prompt_tokens == 14  # 54 characters
        assert sum(s.new_tokens for s in steps) == 14  # 53 characters, not 3 chunks
    said = [r for r in caplog.records if "sends no usage report" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"


def test_without_usage_tokens_listed_with_their_logprobs_are_counted_not_estimated() -> None:
    async def scenario() -> None:
        reply = stream(chunk("Bonjour", logprob=-0.5), chunk(" tout le monde", "stop", -1.0))
        async with running(reply) as (_, url):
            steps = await collect(engine(url), BODY.model_copy(update={"logprobs": True}))
        assert sum(s.new_tokens for s in steps) == 2

    asyncio.run(scenario())


FORMAT = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}


def test_passes_the_sampling_fields_logprobs_priority_and_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REMOTE_KEY", "s3cret")
    body = ChatBody(
        messages=[ChatMessage(role="user", content="x")],
        max_tokens=3,
        temperature=0.0,
        top_p=0.9,
        stop=["\n"],
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logprobs=True,
        top_logprobs=2,
        logit_bias={50256: -100},
        ignore_eos=True,
        top_k=4,
        min_p=0.0,
        repetition_penalty=1.3,
        min_tokens=2,
        response_format=FORMAT,
    )
    reply = stream(chunk("A", logprob=-0.5), chunk("B", "stop", logprob=-1.5), usage(2, 2))

    async def scenario() -> None:
        async with running(reply) as (server, url):
            remote = spec(url, remote_model="org/big", api_key_env="REMOTE_KEY")
            key = WorkerSettings().api_key(remote)
            eng = OpenAIEngine(remote, api_key=key, send_priority=True)
            steps = await collect(eng, body)
        assert [(t.token, t.logprob) for s in steps for t in s.logprobs] == [
            ("A", -0.5),
            ("B", -1.5),
        ]
        tops = [[(x.token, x.logprob) for x in t.top_logprobs] for s in steps for t in s.logprobs]
        assert tops == [[("A", -0.5), ("?", -9)], [("B", -1.5), ("?", -9)]]
        sent = server.bodies[0]
        assert sent["model"] == "org/big"
        assert sent["logprobs"] is True and sent["top_logprobs"] == 2
        assert sent["ignore_eos"] is True and sent["logit_bias"] == {"50256": -100}
        assert sent["response_format"] == FORMAT
        assert sent["priority"] == 1
        assert {k: sent[k] for k in ("temperature", "top_p", "stop", "seed")} == {
            "temperature": 0.0,
            "top_p": 0.9,
            "stop": ["\n"],
            "seed": 7,
        }
        assert (sent["presence_penalty"], sent["frequency_penalty"]) == (0.5, -0.5)
        assert (sent["top_k"], sent["repetition_penalty"], sent["min_tokens"]) == (4, 1.3, 2)
        assert "min_p" not in sent  # at its neutral value
        assert server.headers[0]["authorization"] == "Bearer s3cret"

    asyncio.run(scenario())


def test_a_missing_api_key_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match=r"\$NO_SUCH_KEY"):
        WorkerSettings().api_key(spec("http://127.0.0.1:9/v1", api_key_env="NO_SUCH_KEY"))


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "models-remote.toml"


def test_the_worker_serves_the_examples_remote_model_with_this_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REMOTE_LLM_API_KEY", "k")
    remote = Catalog.load(EXAMPLE).get("remote-large")
    assert remote is not None
    assert isinstance(engine_factory(WorkerSettings(), remote)(), OpenAIEngine)


def test_the_worker_logs_its_servers_url_without_the_password_in_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """httpx sends a URL's user and password as Basic auth: such a catalog entry works, and
    its password went to the log at every start."""
    remote = spec("https://user:s3cret@llm.example/v1")
    with caplog.at_level("INFO"):
        engine_factory(WorkerSettings(), remote)
    assert "llm.example" in caplog.text
    assert "s3cret" not in caplog.text


def test_the_worker_refuses_to_start_without_the_api_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LLMQ_MODELS_FILE", str(EXAMPLE))
    monkeypatch.setenv("LLMQ_MODEL", "remote-large")
    monkeypatch.delenv("REMOTE_LLM_API_KEY", raising=False)
    assert worker_main() == 2
    assert (
        "cannot start the worker: model 'remote-large' reads its API key from "
        "$REMOTE_LLM_API_KEY, which is not set"
    ) in caplog.text


def test_a_raw_prompt_is_continued_by_the_servers_text_completions() -> None:
    raw = BODY.model_copy(
        update={"raw_prompt": True, "logprobs": True, "top_logprobs": 2, "top_k": 3}
    )
    reply = stream(text_chunk("Once"), text_chunk(" upon", "length"), usage(4, 2))

    async def scenario() -> None:
        async with running(reply) as (server, url):
            steps = await collect(engine(url), raw)
        assert "".join(s.text for s in steps) == "Once upon"
        assert (steps[-1].prompt_tokens, sum(s.new_tokens for s in steps)) == (4, 2)
        assert steps[-1].finish_reason == "length"
        tops = [[(x.token, x.logprob) for x in t.top_logprobs] for s in steps for t in s.logprobs]
        assert tops == [[("Once", -0.5), ("!", -1.0)], [(" upon", -0.5), ("!", -1.0)]]
        assert server.paths == ["/v1/completions"]
        sent = server.bodies[0]
        assert sent["prompt"] == "Say hi" and "messages" not in sent
        assert sent["logprobs"] == 2 and "top_logprobs" not in sent
        assert (sent["max_tokens"], sent["top_k"], sent["stream"]) == (8, 3, True)

    asyncio.run(scenario())


def test_a_server_without_text_completions_refuses_the_request_not_the_model() -> None:
    """A 404 at /completions (a server of chat only) is the request's fault: not retried,
    and not counted by the breaker, so the model's chat requests go on."""

    async def scenario() -> None:
        refusal = status(404, "This is a chat model and not supported in the v1/completions")
        async with running(refusal, ok("still here")) as (server, url):
            eng = engine(url, threshold=1)
            raw = BODY.model_copy(update={"raw_prompt": True})
            with pytest.raises(LlmqError) as refused:
                await collect(eng, raw)
            steps = await collect(eng)
        assert refused.value.code is ErrorCode.UNSUPPORTED
        assert "serves no text completions at" in refused.value.message
        assert "chat model" in refused.value.message
        assert "".join(s.text for s in steps) == "still here"
        assert server.paths == ["/v1/completions", "/v1/chat/completions"]

    asyncio.run(scenario())

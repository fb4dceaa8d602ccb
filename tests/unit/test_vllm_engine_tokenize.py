"""VllmEngine builds prompts off the event loop, one at a time on its tokenizing thread: a
long prompt's chat template takes a tenth of a second, which on the loop would stall every
other generation's outputs, deltas, commits and heartbeats. It counts (for metering) on a
thread of its own, with a tokenizer of its own, so no count holds back a prompt. On a
stand-in for AsyncLLM and a slow stand-in tokenizer: no engine starts."""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from schemas.lanes import Lane
from schemas.request import ChatBody, ChatMessage
from tests.unit.worker_fakes import model_spec, serve_one
from tests.unit.worker_fakes import work as work_record

with warnings.catch_warnings():  # vLLM warns as it loads
    warnings.simplefilter("ignore", DeprecationWarning)
    from workers.vllm_engine import VllmEngine

pytestmark = pytest.mark.timeout(60)

SLOW_S = 0.05
"""How long the stand-in tokenizer takes for one prompt: long enough for prompts built at
once to overlap, were they built on several threads."""
HELD = "held"
"""A word that holds the stand-in tokenizer, on a text with it, until the test releases it."""


@dataclass
class _Choice:
    text: str = "ok"
    finish_reason: str | None = "stop"
    token_ids: list[int] = field(default_factory=lambda: [7])
    logprobs: None = None


@dataclass
class _Output:
    """What the engine reads of vLLM's RequestOutput."""

    outputs: list[_Choice] = field(default_factory=lambda: [_Choice()])
    finished: bool = True
    num_cached_tokens: int = 0


class _AsyncLLM:
    """Answers every prompt at once."""

    async def generate(
        self, prompt: Any, params: Any, request_id: str, priority: int = 0
    ) -> AsyncIterator[_Output]:
        yield _Output()

    def shutdown(self) -> None:
        """No processes to stop."""


@dataclass
class _Shared:
    """What a stand-in tokenizer shares with its copies: which thread used which tokenizer
    for which text, and the gate that a text with HELD waits at."""

    uses: list[tuple[int, int, str]] = field(default_factory=list)
    """(thread, the tokenizer's id, text), as each use began."""
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class _SlowTokenizer:
    """One token a word, after SLOW_S (a text with HELD: once released); tells the threads that
    used it, and the most at once. Its deep copy, as a fast tokenizer's, is a tokenizer of its
    own."""

    def __init__(self, shared: _Shared | None = None) -> None:
        self.shared = shared or _Shared()
        self.most = 0
        self.threads: set[int] = set()
        self._using = 0
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict[int, Any]) -> _SlowTokenizer:
        return _SlowTokenizer(self.shared)

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
        return self._tokens(" ".join(m["content"] for m in messages))

    def encode(self, text: str) -> list[int]:
        return self._tokens(text)

    def _tokens(self, text: str) -> list[int]:
        with self._lock:
            self.threads.add(threading.get_ident())
            self._using += 1
            self.most = max(self.most, self._using)
        self.shared.uses.append((threading.get_ident(), id(self), text))
        if HELD in text.split():
            self.shared.entered.set()
            self.shared.release.wait(timeout=30)
        else:
            time.sleep(SLOW_S)
        with self._lock:
            self._using -= 1
        return list(range(len(text.split())))


@pytest.fixture
def engine() -> Iterator[VllmEngine]:
    built = VllmEngine.__new__(VllmEngine)  # no engine started
    built._spec, built._shared_prefixes = model_spec(), False
    built._tokenizer, built._engine = cast(Any, _SlowTokenizer()), cast(Any, _AsyncLLM())
    built._tokenizing = ThreadPoolExecutor(1)
    built._running = set()
    yield built
    built.shutdown()


def test_prompts_are_built_off_the_loop_one_at_a_time(engine: VllmEngine) -> None:
    chat = ChatBody(messages=[ChatMessage(role="user", content="a chat prompt")])
    raw = ChatBody(messages=[ChatMessage(role="user", content="a raw one")], raw_prompt=True)

    async def first_steps() -> list[Any]:
        return await asyncio.gather(
            *(anext(engine.generate(f"r{i}", body, 0)) for i, body in enumerate([chat, raw] * 2))
        )

    async def main() -> tuple[int, list[Any]]:
        return threading.get_ident(), await first_steps()

    loop_thread, steps = asyncio.run(main())
    assert [step.prompt_tokens for step in steps] == [3, 3, 3, 3]
    tokenizer = cast(_SlowTokenizer, engine._tokenizer)
    assert loop_thread not in tokenizer.threads, "the loop ran the tokenizer"
    assert tokenizer.most == 1, "one thread at a time uses the tokenizer"
    assert engine._counting is None, "no count, no counting thread"


def test_the_worker_counts_an_uncompressed_prompt_off_the_loop(
    engine: VllmEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compression's savings: the app's prompt, counted after the answer, as long to template
    as the prompt that was generated from (prompt_tokens waits for the tokenizing thread)."""
    callers: set[int] = set()
    count = engine.prompt_tokens

    def counted(*args: Any) -> int:
        callers.add(threading.get_ident())
        return count(*args)

    monkeypatch.setattr(engine, "prompt_tokens", counted)
    uncompressed = [ChatMessage(role="user", content=" ".join(["word"] * 12))]
    producer = serve_one(work_record(Lane.STANDARD, 0, uncompressed=uncompressed), engine)
    loop_thread = threading.get_ident()  # serve_one runs its loop in this thread
    assert callers and loop_thread not in callers, "the loop waited for the count"
    [event] = producer.metering()
    assert event.prompt_tokens_saved == 12 - 3  # "a short prompt" was generated from


def test_a_count_holds_back_no_prompt(engine: VllmEngine) -> None:
    """A burst of compressed requests queued each one's count behind its prompt, and the next
    prompts behind that count: metering delayed their first tokens. A prompt is built while a
    count runs, and no tokenizer object serves two threads."""
    held = [ChatMessage(role="user", content=f"a {HELD} prompt")]
    chat = ChatBody(messages=[ChatMessage(role="user", content="a chat prompt")])
    shared = cast(_SlowTokenizer, engine._tokenizer).shared

    async def main() -> tuple[int, int]:
        counting = asyncio.create_task(asyncio.to_thread(engine.prompt_tokens, held))
        try:
            assert await asyncio.to_thread(shared.entered.wait, 10), "the count never began"
            building = asyncio.ensure_future(anext(engine.generate("r0", chat, 0)))
            done, _ = await asyncio.wait([building], timeout=10)  # never, behind the count
            assert done, "the prompt waited for the count"
        finally:
            shared.release.set()
        return (await building).prompt_tokens, await counting

    assert asyncio.run(main()) == (3, 3)
    users: dict[int, set[int]] = {}
    for thread, tokenizer, _ in shared.uses:
        users.setdefault(tokenizer, set()).add(thread)
    assert all(len(threads) == 1 for threads in users.values()), "a tokenizer served two threads"
    used = {text: (thread, tokenizer) for thread, tokenizer, text in shared.uses}
    count_thread, count_tokenizer = used[f"a {HELD} prompt"]
    build_thread, build_tokenizer = used["a chat prompt"]
    assert count_thread != build_thread, "the count ran on the tokenizing thread"
    assert count_tokenizer != build_tokenizer, "the count used the builds' tokenizer"

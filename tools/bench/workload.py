"""The benchmark's workload: ShareGPT first turns, their repeats, and when each is sent.

Prompts are sampled as vLLM's serving benchmark samples them (tools.sharegpt). The real
ShareGPT repeats that fall in the sample stay; a share of the other requests can then be
replaced by exact copies or paraphrases of earlier ones, for the duplicate-heavy run.

A paraphrase changes only words that do not change the question: a politeness or
greeting prefix, a thanks suffix, the case of the first letter, a trailing "?" or
whitespace. llmq's semantic cache checks every candidate with a guard
(streams/semantic_guard.py), which accepts these rewordings (tests/unit/test_bench_workload.py
checks them on a few prompts). It compares only questions of at most
2,000 characters (92% of 300 prompts sampled with seed 0) and needs an embedding
similarity of 0.75, which each rewording keeps, so about 92% of paraphrases can be expected
to hit once their original is cached; none can while the original is still being generated.
These rewordings test the path, not the guard: its hit rates on real paraphrases are
tools.bench.semantic_quality's.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from tools import sharegpt
from tools.bench.samples import BenchRequest, Kind


def _lower_first(text: str) -> str:
    """Lower-case the first letter of "Explain X", not of "SQL ..." or "I ..."."""
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        return text[0].lower() + text[1:]
    return text


def _toggle_question_mark(text: str) -> str:
    """Drop a trailing "?", or add one; after a space when the text ends in a sign, because
    the guard reads "!?" as the operator "!"."""
    text = text.rstrip()
    if text.endswith("?"):
        return text[:-1]
    return text + ("?" if text[-1:].isalnum() else " ?")


def _swap_first_case(text: str) -> str:
    """The first letter in the other case; a prompt without one gets a "Please, " instead."""
    head = text[0]
    swapped = head.swapcase()
    return swapped + text[1:] if swapped != head else "Please, " + text


REWORDINGS: tuple[Callable[[str], str], ...] = (
    lambda text: "Please, " + _lower_first(text),
    lambda text: "Could you tell me: " + text,
    lambda text: "Hi! " + text,
    lambda text: text.rstrip() + " Thanks!",
    _swap_first_case,
    _toggle_question_mark,
    lambda text: text + "\n",
)
"""Ways to ask the same question in other words; each keeps every content word in order."""


def build_workload(
    n: int,
    cache_dir: Path,
    *,
    seed: int = 0,
    max_tokens: int = 64,
    rate: float | None = None,
    exact_share: float = 0.0,
    paraphrase_share: float = 0.0,
    max_prompt_chars: int = 4000,
    distinct: bool = False,
) -> list[BenchRequest]:
    """`n` requests in the order they are sent, the same for a seed on every machine.

    `rate`: Poisson arrivals at `rate` requests/s, or None for all at once. The shares are
    fractions of `n` replaced by exact copies and paraphrases of earlier requests. A repeat
    asks with its original's max_tokens: an app asking again sends the same request, and
    the fingerprint of a cached answer covers max_tokens. `distinct`: without ShareGPT's
    own repeats, for comparing throughput (llmq answers a repeat without generating it).
    """
    if not (0.0 <= exact_share <= 1.0 and 0.0 <= paraphrase_share <= 1.0):
        raise ValueError("exact_share and paraphrase_share must be between 0 and 1")
    prompts = sharegpt.sample(
        n,
        cache_dir,
        seed=seed,
        max_tokens=max_tokens,
        max_prompt_chars=max_prompt_chars,
        distinct=distinct,
    )
    texts = [p.text for p in prompts]
    tokens = [p.reply_tokens for p in prompts]
    kinds: list[Kind] = ["fresh"] * n
    # 1) Keep the real repeats: a later copy asks exactly like the first.
    first: dict[str, int] = {}
    for i, text in enumerate(texts):
        j = first.setdefault(sharegpt.same_key(text), i)
        if j != i:
            kinds[i], tokens[i] = "sharegpt_repeat", tokens[j]
    real = {
        first[sharegpt.same_key(t)] for i, t in enumerate(texts) if kinds[i] == "sharegpt_repeat"
    }
    # 2) Replace fresh requests (never the first, nor a real repeat's original) by repeats.
    rng = random.Random(f"llmq-bench-repeats-{seed}")
    exact, para = round(exact_share * n), round(paraphrase_share * n)
    free = [i for i in range(1, n) if kinds[i] == "fresh" and i not in real]
    if exact + para > len(free):
        raise ValueError(
            f"{exact} exact and {para} paraphrased repeats asked; only {len(free)} of the "
            f"{n} requests can be replaced"
        )
    replaced = rng.sample(free, exact + para)  # in random order: exact ones first
    new_kinds: dict[int, Kind] = {i: "exact_repeat" for i in replaced[:exact]}
    new_kinds.update({i: "paraphrase" for i in replaced[exact:]})
    for i in sorted(new_kinds):
        j = rng.choice([k for k in range(i) if k not in new_kinds])
        kinds[i], tokens[i] = new_kinds[i], tokens[j]
        texts[i] = texts[j] if kinds[i] == "exact_repeat" else rng.choice(REWORDINGS)(texts[j])
    times = arrival_times(n, rate, seed)
    return [BenchRequest(i, texts[i], tokens[i], times[i], kinds[i]) for i in range(n)]


def arrival_times(n: int, rate: float | None, seed: int = 0) -> list[float]:
    """Send times in seconds: all 0.0 when `rate` is None, else a Poisson process at `rate`
    requests/s that starts at 0 (exponential gaps, as vLLM's serving benchmark draws them).

    Its own random stream, so the arrivals do not move when the repeat shares change.
    """
    if rate is None:
        return [0.0] * n
    if rate <= 0:
        raise ValueError(f"rate must be positive requests/s, got {rate}")
    rng = random.Random(f"llmq-bench-arrivals-{seed}")
    times, now = [], 0.0
    for _ in range(n):
        times.append(now)
        now += rng.expovariate(rate)
    return times


HIT_TOKENS = 8
"""Each cached answer's max_tokens: its original is generated once, while the cache warms."""


def cache_hit_workload(n: int, distinct: int) -> tuple[list[BenchRequest], list[BenchRequest]]:
    """`distinct` short questions to answer first, and `n` exact repeats of them (in turn)
    to send at once, each a hit of the exact cache once the originals are answered."""
    if n < 1 or distinct < 1:
        raise ValueError(f"want at least one repeat of at least one question, got {n}, {distinct}")
    questions = [f"Name a colour ({k})." for k in range(distinct)]
    originals = [BenchRequest(k, q, HIT_TOKENS, 0.0) for k, q in enumerate(questions)]
    repeats = [
        BenchRequest(i, questions[i % distinct], HIT_TOKENS, 0.0, "exact_repeat") for i in range(n)
    ]
    return originals, repeats

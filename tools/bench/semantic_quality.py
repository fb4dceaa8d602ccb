"""How often the semantic cache answers a paraphrase, and how often a near miss, on the
labelled pairs of tests/data: semantic_pairs.jsonl (its tune and measure halves),
semantic_pairs_holdout.jsonl (written by someone who never saw the guard; split "holdout")
and paraphrases.jsonl (the first set, which the first guard was written against).
Per guard (strict, the default, and lenient) and split: the hit rate on paraphrases and the
false-hit rate per kind of near miss, with 95% Wilson intervals, decided as the cache
decides (cosine similarity at or above the threshold, then the guard), with `a` cached and
`b` asked. Tune on the tune split; only report the others.

    python -m tools.bench.semantic_quality [--threshold 0.75] [--out quality.json]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from streams.semantic import DEFAULT_THRESHOLD
from streams.semantic_guard import ADDITION_SIMILARITY, same_question
from tools.intervals import wilson

DATA = Path(__file__).parents[2] / "tests" / "data"
PAIRS = (
    DATA / "semantic_pairs.jsonl",
    DATA / "semantic_pairs_holdout.jsonl",
    DATA / "paraphrases.jsonl",
)
GUARDS = {"strict": math.inf, "lenient": ADDITION_SIMILARITY}
"""Each guard's `additions_from` (streams/semantic_guard.py)."""
PRECISIONS = {"auto": None, "float32": False, "bfloat16": True}
"""--precision: the embedder's `bf16` (streams.embedder.Embedder)."""


@dataclass(frozen=True)
class Rate:
    """Hits among the pairs of one split and kind, with a 95% interval."""

    split: str
    kind: str
    pairs: int
    hits: int
    low: float
    high: float
    guard: str = "strict"

    @property
    def rate(self) -> float:
        return self.hits / self.pairs if self.pairs else 0.0


def rates(
    pairs: Sequence[dict[str, Any]], hits: Sequence[bool], guard: str = "strict"
) -> list[Rate]:
    """Per split: paraphrases, every near miss together, then each kind of near miss."""
    out = []
    for split in sorted({p["split"] for p in pairs}):
        rows = [(p, hit) for p, hit in zip(pairs, hits, strict=True) if p["split"] == split]
        kinds = sorted({p["kind"] for p, _ in rows} - {"paraphrase"})
        groups = {
            "paraphrase": [hit for p, hit in rows if p["same"]],
            "near misses": [hit for p, hit in rows if not p["same"]],
        }
        groups |= {kind: [hit for p, hit in rows if p["kind"] == kind] for kind in kinds}
        for kind, found in groups.items():
            low, high = wilson(sum(found), len(found))
            out.append(Rate(split, kind, len(found), sum(found), low, high, guard))
    return out


def table(found: list[Rate]) -> str:
    """A markdown table: the hit rate of paraphrases, the false-hit rate of the rest."""
    lines = [
        "| guard | split | pairs | n | answered from the cache | 95% interval |",
        "|---|---|---|---:|---:|---|",
    ]
    lines += [
        f"| {r.guard} | {r.split} | {r.kind} | {r.pairs} | {r.hits} ({r.rate:.1%}) "
        f"| {r.low:.1%} - {r.high:.1%} |"
        for r in found
    ]
    return "\n".join(lines)


def untuned_near_misses(pairs: Sequence[dict[str, Any]], hits: Sequence[bool], guard: str) -> Rate:
    """The false-hit rate over every near miss outside the tune split (split "untuned"):
    what LENIENT_FALSE_HIT_BOUND in streams/semantic.py is compared with."""
    misses = [
        hit for hit, p in zip(hits, pairs, strict=True) if not p["same"] and p["split"] != "tune"
    ]
    low, high = wilson(sum(misses), len(misses))
    return Rate("untuned", "near misses", len(misses), sum(misses), low, high, guard)


def load(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Every labelled pair; a file without splits is one split, named after the file
    ("holdout" for semantic_pairs_holdout.jsonl, "paraphrases" for paraphrases.jsonl)."""
    pairs = []
    for path in paths:
        split = {"split": path.stem.removeprefix("semantic_pairs_")}
        for line in path.read_text(encoding="utf-8").splitlines():
            if line:
                pairs.append(split | json.loads(line))
    return pairs


def main() -> None:
    """Embed every pair once, decide each as the cache would, print and save the rates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--pairs", type=Path, nargs="+", default=list(PAIRS))
    parser.add_argument("--out", type=Path, help="write the rates as JSON here")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="the embedder's (auto: bfloat16 where this CPU is faster at it)",
    )
    args = parser.parse_args()
    from streams.embedder import Embedder  # noqa: PLC0415 -- torch: only to measure

    pairs = load(args.pairs)
    embedder = Embedder(bf16=PRECISIONS[args.precision])
    print(f"embeddings in {embedder.precision}")
    cached = embedder.embed([p["a"] for p in pairs])
    asked = embedder.embed([p["b"] for p in pairs])
    similarity = [float(s) for s in (cached * asked).sum(axis=1)]
    found: list[Rate] = []
    for guard, additions_from in GUARDS.items():
        hits = [
            s >= args.threshold and same_question(p["b"], p["a"], s, additions_from)
            for s, p in zip(similarity, pairs, strict=True)
        ]
        found += rates(pairs, hits, guard)
        found.append(untuned_near_misses(pairs, hits, guard))
    names = ", ".join(p.name for p in args.pairs)
    print(f"threshold {args.threshold}, {len(pairs)} pairs of {names}\n")
    print(table(found))
    if args.out:
        doc = {"threshold": args.threshold, "rates": [asdict(r) for r in found]}
        args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()

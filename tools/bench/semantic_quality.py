"""How often the semantic cache answers a paraphrase, and how often a near miss, on the
labelled pairs of tests/data/semantic_pairs.jsonl: per split, the hit rate on paraphrases
and the false-hit rate per kind of near miss, with 95% Wilson intervals, decided as the
cache decides (cosine similarity at or above the threshold, then the lexical guard), with
`a` cached and `b` asked. Tune on the tune split; report the measure split.

    python -m tools.bench.semantic_quality [--threshold 0.85] [--out quality.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from streams.semantic import DEFAULT_THRESHOLD
from streams.semantic_guard import same_question
from tools.intervals import wilson

PAIRS = Path(__file__).parents[2] / "tests" / "data" / "semantic_pairs.jsonl"


@dataclass(frozen=True)
class Rate:
    """Hits among the pairs of one split and kind, with a 95% interval."""

    split: str
    kind: str
    pairs: int
    hits: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.hits / self.pairs if self.pairs else 0.0


def rates(pairs: Sequence[dict[str, Any]], hits: Sequence[bool]) -> list[Rate]:
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
            out.append(Rate(split, kind, len(found), sum(found), low, high))
    return out


def table(found: list[Rate]) -> str:
    """A markdown table: the hit rate of paraphrases, the false-hit rate of the rest."""
    lines = [
        "| split | pairs | n | answered from the cache | 95% interval |",
        "|---|---|---:|---:|---|",
    ]
    lines += [
        f"| {r.split} | {r.kind} | {r.pairs} | {r.hits} ({r.rate:.1%}) "
        f"| {r.low:.1%} - {r.high:.1%} |"
        for r in found
    ]
    return "\n".join(lines)


def main() -> None:
    """Embed every pair once, decide each as the cache would, print and save the rates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--pairs", type=Path, default=PAIRS)
    parser.add_argument("--out", type=Path, help="write the rates as JSON here")
    args = parser.parse_args()
    from streams.embedder import Embedder  # noqa: PLC0415 -- torch: only to measure

    pairs = [json.loads(line) for line in args.pairs.read_text().splitlines() if line]
    embedder = Embedder()
    cached = embedder.embed([p["a"] for p in pairs])
    asked = embedder.embed([p["b"] for p in pairs])
    similarity = (cached * asked).sum(axis=1)
    hits = [
        bool(s >= args.threshold) and same_question(p["b"], p["a"])
        for s, p in zip(similarity, pairs, strict=True)
    ]
    found = rates(pairs, hits)
    print(f"threshold {args.threshold}, {len(pairs)} pairs of {args.pairs.name}\n")
    print(table(found))
    if args.out:
        doc = {"threshold": args.threshold, "rates": [asdict(r) for r in found]}
        args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()

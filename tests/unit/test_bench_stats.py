"""Benchmark figures from hand-made samples, against values worked out by hand."""

from __future__ import annotations

import pytest

from tools.bench.samples import Kind, Sample, WayResult
from tools.bench.stats import (
    Summary,
    added_by_the_door,
    lanes,
    ratios,
    repeated_ratios,
    summarize,
)
from tools.intervals import small_sample_interval


def _sample(
    i: int,
    latency_s: float,
    *,
    ttft_s: float | None = None,
    engine_s: float | None = None,
    output_tokens: int = 10,
    cache: str = "none",
    kind: Kind = "fresh",
    ok: bool = True,
) -> Sample:
    return Sample(
        index=i,
        kind=kind,
        ok=ok,
        sent_s=0.0,
        latency_s=latency_s,
        ttft_s=ttft_s,
        engine_s=engine_s,
        prompt_tokens=5,
        output_tokens=output_tokens,
        cache=cache,
        error=None if ok else "engine_error",
    )


def test_a_way_without_caching() -> None:
    # Latencies 1..5 s; TTFT 0.1..0.5 s; engine time 0.5 s less than the latency.
    samples = [
        _sample(i, float(i), ttft_s=i / 10, engine_s=i - 0.5, output_tokens=10 * i)
        for i in range(1, 6)
    ]
    samples.append(_sample(6, 99.0, ok=False, output_tokens=0))
    s = summarize(WayResult("engine", samples, wall_s=10.0))
    assert (s["requests"], s["ok"], s["errors"]) == (6, 5, 1)
    assert s["req_per_s"] == pytest.approx(0.5)
    assert s["output_tok_per_s"] == pytest.approx(15.0)  # 150 tokens in 10 s
    # numpy linear percentiles of [1, 2, 3, 4, 5]: rank q/100 * 4.
    assert s["latency_p50_s"] == pytest.approx(3.0)
    assert s["latency_p90_s"] == pytest.approx(4.6)
    assert s["latency_p99_s"] == pytest.approx(4.96)
    assert s["ttft_p50_s"] == pytest.approx(0.3)
    assert s["ttft_p99_s"] == pytest.approx(0.496)
    assert s["overhead_p50_s"] == pytest.approx(0.5)
    assert s["overhead_p99_s"] == pytest.approx(0.5)
    assert s["cache_hits"] == 0
    assert s["hit_latency_p50_s"] is None
    assert s["generations"] is None
    assert s["generations_saved"] is None
    assert s["cost_saved_usd"] is None


def test_no_data_gives_none() -> None:
    s = summarize(WayResult("vllm-serve", [_sample(0, 2.0, ok=False)], wall_s=0.0))
    assert s["ok"] == 0
    assert s["req_per_s"] is None
    assert s["latency_p50_s"] is None
    assert s["ttft_p90_s"] is None
    assert s["overhead_p99_s"] is None


def test_cache_hits_generations_and_cost_saved() -> None:
    samples = [
        _sample(0, 4.0, engine_s=3.0),
        _sample(1, 6.0, engine_s=5.0),
        _sample(2, 0.02, cache="exact", kind="exact_repeat"),
        _sample(3, 0.04, cache="semantic", kind="paraphrase"),
        _sample(4, 5.0, kind="paraphrase"),
        _sample(5, 3.0, cache="coalesced", kind="sharegpt_repeat"),
    ]
    s = summarize(WayResult("llmq", samples, wall_s=6.0, generations=3, cost_usd=0.003))
    assert s["cache_hits"] == 3
    # Hits [0.02, 0.04, 3.0]: p50 0.04, p99 at rank 1.98.
    assert s["hit_latency_p50_s"] == pytest.approx(0.04)
    assert s["hit_latency_p99_s"] == pytest.approx(0.04 + 0.98 * (3.0 - 0.04))
    assert s["overhead_p50_s"] == pytest.approx(1.0)  # only where the engine time is known
    assert (s["paraphrase_requests"], s["paraphrase_hits"]) == (2, 1)
    assert (s["exact_repeat_requests"], s["exact_repeat_hits"]) == (1, 1)
    assert (s["fresh_requests"], s["fresh_hits"]) == (2, 0)
    assert s["generations_saved"] == 3
    assert s["cost_saved_usd"] == pytest.approx(0.003)  # 3 saved at $0.001 each


def test_ratios_of_llmq_to_each_baseline() -> None:
    summaries: dict[str, dict[str, float | int | None]] = {
        "engine": {
            "req_per_s": 4.0,
            "output_tok_per_s": 200.0,
            "ttft_p50_s": 0.5,
            "latency_p50_s": 2.0,
        },
        "vllm-serve": {
            "req_per_s": 2.0,
            "output_tok_per_s": 0.0,
            "ttft_p50_s": None,
            "latency_p50_s": 4.0,
        },
        "llmq": {
            "req_per_s": 3.0,
            "output_tok_per_s": 150.0,
            "ttft_p50_s": 1.0,
            "latency_p50_s": 3.0,
        },
        "llmq-duplicates": {"req_per_s": 30.0},
    }
    assert ratios(summaries) == {
        "llmq/engine req_per_s": pytest.approx(0.75),
        "llmq/engine output_tok_per_s": pytest.approx(0.75),
        "llmq/engine ttft_p50_s": pytest.approx(2.0),
        "llmq/engine latency_p50_s": pytest.approx(1.5),
        "llmq/vllm-serve req_per_s": pytest.approx(1.5),
        "llmq/vllm-serve latency_p50_s": pytest.approx(0.75),
    }
    assert ratios({"engine": summaries["engine"]}) == {}
    door = {**summaries["llmq"], "latency_p50_s": 4.4}
    with_door = ratios({**summaries, "gateway": door})
    assert with_door["gateway/vllm-serve latency_p50_s"] == pytest.approx(1.1)


def test_repeated_ratios_are_paired_with_a_students_t_interval() -> None:
    def run(engine: float, llmq: float | None) -> dict[str, Summary]:
        return {"engine": {"req_per_s": engine}, "llmq": {"req_per_s": llmq}}

    spreads = repeated_ratios([run(4.0, 3.0), run(2.0, 2.0), run(4.0, 5.0)])
    assert list(spreads) == ["llmq/engine req_per_s"]
    spread = spreads["llmq/engine req_per_s"]
    assert spread.values == pytest.approx([0.75, 1.0, 1.25])
    # Mean 1, sd 0.25 over 3: t(2 df) = 4.303.
    assert spread.mean == pytest.approx(1.0)
    assert (spread.low, spread.high) == pytest.approx((1 - 0.6211, 1 + 0.6211), abs=1e-4)
    # A ratio one run lacks is not reported: its values would not be paired.
    assert repeated_ratios([run(4.0, 3.0), run(2.0, None)]) == {}


def test_a_small_samples_interval_widens_with_fewer_values() -> None:
    assert small_sample_interval([0.8]) == (0.8, 0.8)
    low, high = small_sample_interval([1.0, 2.0, 3.0])
    assert (low, high) == pytest.approx((2 - 4.303 / 3**0.5, 2 + 4.303 / 3**0.5))
    values = [1.0, 2.0, 3.0] * 4  # 11 degrees of freedom
    low, high = small_sample_interval(values)
    sd = (sum((v - 2) ** 2 for v in values) / 11) ** 0.5
    assert high - 2 == pytest.approx(2.201 * sd / 12**0.5)
    values = [1.0, 2.0, 3.0] * 11  # past the table: the normal's 1.96
    low, high = small_sample_interval(values)
    sd = (sum((v - 2) ** 2 for v in values) / 32) ** 0.5
    assert high - 2 == pytest.approx(1.959964 * sd / 33**0.5)


def test_what_the_front_door_adds_to_vllms_server() -> None:
    server: Summary = {f"{n}_p{q}_s": 1.0 for n in ("ttft", "latency") for q in (50, 90, 99)}
    door: Summary = {**server, "ttft_p50_s": 1.02, "latency_p99_s": None}
    added = added_by_the_door({"vllm-serve": server, "gateway": door})
    assert added["ttft_p50_s"] == pytest.approx(0.02)
    assert added["latency_p50_s"] == 0.0 and "latency_p99_s" not in added
    assert added_by_the_door({"vllm-serve": server}) == {}


def test_the_lanes_figures_are_ratios_of_their_runs() -> None:
    idle: Summary = {"latency_p50_s": 0.5, "latency_p99_s": 0.8}
    busy: Summary = {"latency_p50_s": 1.5, "latency_p99_s": 4.0}
    found = lanes(
        {
            "interactive-idle": idle,
            "interactive-busy": busy,
            "batch-lane": {"output_tok_per_s": 90.0},
            "llmq": {"output_tok_per_s": 100.0},
        }
    )
    assert found == pytest.approx(
        {
            "interactive_p50_ratio": 3.0,
            "interactive_p99_ratio": 5.0,
            "batch_over_llmq_output_tok_per_s": 0.9,
        }
    )
    # Without the llmq way there is no throughput to compare with; without probes, nothing.
    alone = lanes({"interactive-idle": idle, "interactive-busy": busy})
    assert set(alone) == {"interactive_p50_ratio", "interactive_p99_ratio"}
    assert lanes({"llmq": {"output_tok_per_s": 1.0}}) == {}

"""The queue and result latency histograms reach an hour: they stopped at 300 and 120 s, so
the batch lane's target (LLMQ_DRAIN_BATCH_S, 900 s) and every wait past those read as +Inf."""

from __future__ import annotations

import pytest
from prometheus_client import Histogram

from autoscaler.settings import AutoscalerSettings
from schemas.lanes import Lane
from streams import metrics as streams_metrics
from workers import metrics as workers_metrics

pytestmark = pytest.mark.timeout(30)


def _bounds(histogram: Histogram, *labels: str) -> set[float]:
    """The finite upper bounds of the histogram's buckets."""
    child = histogram.labels(*labels)
    return {
        float(sample.labels["le"])
        for family in child.collect()
        for sample in family.samples
        if sample.name.endswith("_bucket") and sample.labels["le"] != "+Inf"
    }


@pytest.mark.parametrize(
    ("histogram", "labels"),
    [
        (workers_metrics.QUEUE, (Lane.BATCH.value,)),
        (streams_metrics.RESULT_LATENCY, ("none", Lane.BATCH.value)),
    ],
    ids=["queue", "result"],
)
def test_latency_buckets_reach_past_the_batch_lanes_target(
    histogram: Histogram, labels: tuple[str, ...]
) -> None:
    bounds = _bounds(histogram, *labels)
    assert AutoscalerSettings().drain_batch_s in bounds
    assert {600, 900, 1800, 3600} <= bounds

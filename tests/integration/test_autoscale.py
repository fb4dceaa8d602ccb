"""The autoscaler's loop on a real stack of its own: a burst on the batch lane grows the
pool, the backlog drains, the pool shrinks back; every request answered once and generated
once, none cut off (tools/bench/autoscale_burst.py, smaller than the benchmark)."""

from __future__ import annotations

import pytest

from tools.bench.autoscale_burst import run
from tools.stack.settings import LocalSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


REQUESTS = 96


def test_a_burst_grows_the_pool_which_drains_it_and_shrinks_back() -> None:
    burst, problems = run(
        REQUESTS,
        2,
        cache_dir=LocalSettings().cache_dir,
        max_tokens=32,
        # A tight batch target, so that this small burst needs the second worker too, and a
        # short down-scale window: the loop, not the benchmark's patience, is under test.
        windows={"LLMQ_DRAIN_BATCH_S": "5", "LLMQ_STABILIZATION_S": "20"},
        say=lambda line: print(line, flush=True),
    )
    assert problems == []
    assert burst.most_replicas() == 2
    assert len(burst.replies) == REQUESTS and set(burst.replies.values()) == {1}
    assert set(burst.generations.values()) == {1}
    assert burst.samples[-1].running == 1

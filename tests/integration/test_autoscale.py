"""The autoscaler's loop on a real stack of its own: a burst on the batch lane grows the
pool, the backlog drains, the pool shrinks back; every request answered once and generated
once, none cut off (tools/bench/autoscale_burst.py, at half the benchmark's size)."""

from __future__ import annotations

import pytest

from tools.bench.autoscale_burst import run
from tools.stack.settings import LocalSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


def test_a_burst_grows_the_pool_which_drains_it_and_shrinks_back() -> None:
    burst, problems = run(
        160,
        2,
        cache_dir=LocalSettings().cache_dir,
        # A tight batch target, so that this smaller burst needs the second worker too.
        windows={"LLMQ_DRAIN_BATCH_S": "20"},
        say=lambda line: print(line, flush=True),
    )
    assert problems == []
    assert burst.most_replicas() == 2
    assert len(burst.replies) == 160 and set(burst.replies.values()) == {1}
    assert set(burst.generations.values()) == {1}
    assert burst.samples[-1].running == 1

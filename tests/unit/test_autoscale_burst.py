"""The burst's pure parts: its catalog file and its latency windows."""

from __future__ import annotations

from pathlib import Path

from schemas.catalog import Catalog
from tools.bench.autoscale_burst import _catalog, _latency_windows


def test_the_burst_catalog_is_the_builtin_one_with_a_longer_timeout(tmp_path: Path) -> None:
    loaded = Catalog.load(_catalog(tmp_path / "models.toml", 900.0))
    builtin = Catalog.builtin()
    assert loaded.default == builtin.default
    assert [m.timeout_s for m in loaded.models] == [900.0]
    assert [m.model_copy(update={"timeout_s": 300.0}) for m in loaded.models] == builtin.models


def test_latency_windows_give_each_window_its_median_and_p99() -> None:
    latencies = [(1.0, 2.0), (2.0, 4.0), (3.0, 6.0), (16.0, 10.0)]
    assert _latency_windows(latencies, 15.0) == [(15.0, 4.0, 6.0), (30.0, 10.0, 10.0)]

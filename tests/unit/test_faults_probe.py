"""What the fault harness reads from /proc and from a process's log."""

from __future__ import annotations

from pathlib import Path

from tools.faults.probe import Peaks, log_lines, rss_bytes, samples, starts
from tools.stack.procs import Proc


def _process(proc: Path, pid: int, ppid: int, rss_kib: int | None) -> None:
    (proc / str(pid)).mkdir()
    (proc / str(pid) / "stat").write_text(f"{pid} (a (b) c) S {ppid} 1 1 0")
    status = f"Name:\tx\nVmRSS:\t{rss_kib} kB\n" if rss_kib is not None else "Name:\tx\n"
    (proc / str(pid) / "status").write_text(status)


def test_rss_adds_up_a_process_and_all_its_descendants(tmp_path: Path) -> None:
    _process(tmp_path, 10, 1, 100)  # the worker
    _process(tmp_path, 11, 10, 1000)  # its engine core
    _process(tmp_path, 12, 11, 10)  # the engine's own child
    _process(tmp_path, 13, 1, 5000)  # not ours
    _process(tmp_path, 14, 10, None)  # a zombie has no VmRSS
    assert rss_bytes(10, tmp_path) == 1110 * 1024
    assert rss_bytes(None, tmp_path) is None
    assert rss_bytes(99, tmp_path) is None


def test_samples_of_one_reading_by_name_and_labels() -> None:
    text = (
        "# TYPE desired gauge\n"
        'desired{model="a"} 2.0\n'
        'desired{model="b"} 5.0\n'
        "# TYPE target gauge\n"
        'target{model="b"} 3.0\n'
        'target{model="a"} 1.0\n'
    )
    names = ("desired", "target", "running")
    assert samples(text, names, {"model": "a"}) == {"desired": 2.0, "target": 1.0, "running": 0}
    assert samples(text, names, {"model": "c"}) == dict.fromkeys(names, 0.0)


def test_peaks_keep_the_first_reading_and_the_highest() -> None:
    readings = iter([3.0, None, 7.0, 5.0])
    peaks = Peaks({"x": lambda: next(readings)})
    for _ in range(4):
        peaks.sample()
    assert (peaks.first, peaks.peak) == ({"x": 3.0}, {"x": 7.0})


def test_log_lines_are_the_end_of_one_run(tmp_path: Path) -> None:
    proc = Proc("streams", ["true"], tmp_path)
    proc.log_file.write_text(
        "\n=== 2026-11-21 10:00:00 starting streams\nfirst run\nit crashed\n"
        "\n=== 2026-11-21 10:01:00 starting streams\nsecond run\n"
    )
    assert log_lines(proc) == ["second run"]
    assert log_lines(proc, run=-2) == ["first run", "it crashed"]
    assert log_lines(proc, run=-3) == []
    assert log_lines(proc, run=1) == ["first run", "it crashed"]
    assert log_lines(proc, run=2) == ["second run"]
    assert log_lines(proc, run=3) == []
    assert starts(proc) == 2 and starts(Proc("none", ["true"], tmp_path)) == 0
    assert log_lines(Proc("none", ["true"], tmp_path)) == []

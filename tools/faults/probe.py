"""Watching the stack from outside while a fault scenario runs: a process's /metrics, the
memory of a process and its children, a consumer group's backlog, and what a log said."""

from __future__ import annotations

import re
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from tools.stack.procs import Proc

Gauge = Callable[[], float | None]
"""A reading; None when it cannot be read just now."""


def metric(endpoint: str, name: str, **labels: str) -> float | None:
    """One sample of a /metrics endpoint: 0 when absent, None when it does not answer."""
    found = metrics(endpoint, name, **labels)
    return None if found is None else found[name]


def metrics(endpoint: str, *names: str, **labels: str) -> dict[str, float] | None:
    """A sample of each of `names` from one reading of a /metrics endpoint (so they are of
    one moment): 0 when absent, None when it does not answer."""
    try:
        with urllib.request.urlopen(endpoint, timeout=2) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    return samples(text, names, labels)


def samples(text: str, names: tuple[str, ...], labels: dict[str, str]) -> dict[str, float]:
    """The first sample of each of `names` with `labels` in a /metrics text; 0 when absent."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names and all(sample.labels.get(k) == v for k, v in labels.items()):
                found.setdefault(sample.name, float(sample.value))
    return {name: found.get(name, 0.0) for name in names}


def rss_bytes(pid: int | None, proc_dir: Path = Path("/proc")) -> float | None:
    """Resident memory of `pid` and all its descendants (vLLM's engine core is a child)."""
    if pid is None:
        return None
    children: dict[int, list[int]] = {}
    for stat in proc_dir.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += _vm_rss_kib(proc_dir / str(current) / "status")
        todo.extend(children.get(current, []))
    return total * 1024.0 if total else None


def _vm_rss_kib(status: Path) -> int:
    try:
        lines = status.read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def partition_leaders(bootstrap: str, topics: list[str]) -> Counter[int]:
    """How many partitions of `topics` each broker (by node id) leads now."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="llmq-faults")
    try:
        described = admin.describe_topics(topics)
    finally:
        admin.close()
    return Counter(p["leader_id"] for topic in described for p in topic["partitions"])


class Backlog:
    """Records of some topics that a consumer group has not committed yet (its lag)."""

    def __init__(self, bootstrap: str, group: str, topics: list[str]) -> None:
        self._group = group
        self._admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="llmq-faults")
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, client_id="llmq-faults"
        )
        self._tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(self._consumer.partitions_for_topic(topic) or ())
        ]

    def __call__(self) -> float | None:
        """The backlog now; None when Kafka does not answer."""
        try:
            ends = self._consumer.end_offsets(self._tps)
            committed = self._admin.list_group_offsets({self._group: self._tps})[self._group]
        except Exception:  # kafka-python raises assorted errors while a broker is away
            return None
        total = 0
        for tp in self._tps:
            done = committed.get(tp)
            total += ends[tp] - (done.offset if done is not None and done.offset >= 0 else 0)
        return float(total)

    def close(self) -> None:
        self._consumer.close()
        self._admin.close()


class Peaks:
    """Reads some gauges every `interval_s` from a thread; keeps each one's first reading
    and its peak."""

    def __init__(self, gauges: dict[str, Gauge], interval_s: float = 1.0) -> None:
        self._gauges = gauges
        self._interval_s = interval_s
        self.first: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-peaks", daemon=True)

    def sample(self) -> None:
        """Read every gauge once."""
        for name, gauge in self._gauges.items():
            value = gauge()
            if value is None:
                continue
            self.first.setdefault(name, value)
            self.peak[name] = max(value, self.peak.get(name, value))

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()


def _runs(proc: Proc) -> list[str]:
    """Its log split at each start's mark: what precedes the first, then one per run."""
    try:
        text = proc.log_file.read_text(errors="replace")
    except FileNotFoundError:
        return [""]
    return text.split(f" starting {proc.name}\n")


def starts(proc: Proc) -> int:
    """How many times the process was started (its log marks each start)."""
    return len(_runs(proc)) - 1


def log_lines(proc: Proc, run: int = -1, lines: int = 6) -> list[str]:
    """The last lines a process logged in one of its runs (1 the first, -1 the latest, -2
    the one before): what a process that died said last."""
    runs = _runs(proc)
    if not 0 < (run if run > 0 else len(runs) + run) < len(runs):
        return []  # no such run (index 0 is what precedes the first)
    said = [line for line in runs[run].splitlines() if line.strip() and line[:4] != "=== "]
    return said[-lines:]


DRAINED = re.compile(r"\S+ \S+ INFO workers: worker \S+ stopped")
"""The last line of a worker that drained and left on SIGTERM (workers/__main__.py `serve`),
as llmq.startup.LOG_FORMAT writes it."""


def drained(lines: Iterable[str]) -> bool:
    """Whether a worker's log lines hold its clean drain's last line: not its error exit
    ("the worker stopped: <why>") nor its grace running out ("not stopped ... after the
    signal to stop")."""
    return any(DRAINED.fullmatch(line) for line in lines)

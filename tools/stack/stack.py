"""`llmq local up | down | status`: the whole stack on one machine, without Docker."""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import redis
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from schemas.catalog import Catalog, ModelSpec
from schemas.names import topic_plan
from schemas.redact import mask_url
from tools.files import write_whole
from tools.stack import MAX_STREAMS, kafka
from tools.stack.procs import Proc
from tools.stack.settings import LocalSettings
from tools.stack.variables import unread
from tools.topics import ensure_topics
from workers.checkpoint import resolve_model_source

BROKERS_FILE = "brokers"
"""Beside the first node's data: how many brokers the stack's Kafka was made with."""
UNPINNED = {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}
"""A further replica's vLLM leaves its threads to the scheduler. Pinned to the cores that
the first one's threads keep busy, it took 281 s to load beside a saturated engine on this
2-core machine; unpinned, 102 s (45 s on an idle machine)."""
PORT_GRACE_S = 15.0
"""How long a port held by a process that is still exiting may take to come free."""


class StackError(RuntimeError):
    """A component did not come up; the message carries the end of its log."""


@dataclass(frozen=True)
class Component:
    """A process of the stack, the loopback ports it listens on, and how to tell it is ready."""

    proc: Proc
    ready: Callable[[], bool]
    endpoint: str
    ports: tuple[int, ...]
    timeout_s: float = 120.0


@dataclass(frozen=True)
class ComponentStatus:
    """One line of `llmq local status`."""

    name: str
    pid: int | None
    ready: bool
    endpoint: str
    log: str


class LocalStack:
    """Kafka (KRaft: one broker, or a cluster of three), Redis, the stream processor (one
    instance or more), each catalog model's workers, the autoscaler and the front door."""

    def __init__(self, settings: LocalSettings | None = None) -> None:
        settings = settings or LocalSettings()
        self._made_with = _recorded_brokers(settings.state_dir)
        self.settings = settings.model_copy(
            update={"brokers": settings.brokers or self._made_with or 1}
        )
        self.catalog = Catalog.load(self.settings.models_file)
        self._run = self.settings.state_dir / "run"
        self.nodes = kafka.cluster_nodes(
            self.settings.state_dir, self.settings.kafka_port, self.settings.brokers or 1
        )

    def components(self) -> list[Component]:
        """In start order."""
        s = self.settings
        redis_dir = s.state_dir / "redis"
        comps = [self.broker(node) for node in self.nodes]
        comps += [
            Component(
                Proc(
                    "redis",
                    [
                        "redis-server",
                        "--bind",
                        "127.0.0.1",
                        "--port",
                        str(s.redis_port),
                        "--dir",
                        str(redis_dir),
                        "--appendonly",
                        "yes",
                        "--save",
                        "",
                        "--daemonize",
                        "no",
                    ],
                    self._run,
                    stop_timeout_s=10,
                ),
                ready=partial(_redis_up, s.redis_url),
                endpoint=s.redis_url,
                ports=(s.redis_port,),
            ),
        ]
        comps += [self.streams(n) for n in range(1, s.streams + 1)]
        first = max(1, s.min_replicas)
        for spec in self.catalog.models:
            comps += [self.replica(spec, r) for r in range(1, first + 1)]
        if s.autoscale:
            comps.append(self.autoscaler())
        comps.append(self.gateway(s.api_port))
        return comps

    @property
    def brokers(self) -> list[Component]:
        """Every Kafka node of the stack."""
        return [self.broker(node) for node in self.nodes]

    def broker(self, node: kafka.Node) -> Component:
        """One Kafka node: `kafka`, then `kafka-2` and `kafka-3` in a cluster."""
        name = "kafka" if node.node_id == 1 else f"kafka-{node.node_id}"
        return Component(
            Proc(
                name,
                kafka.broker_argv(kafka.libs_dir(self.settings.cache_dir), node.props),
                self._run,
                stop_timeout_s=30,
            ),
            ready=partial(_port_open, node.port),
            endpoint=f"127.0.0.1:{node.port}",
            ports=(node.port, node.controller_port),
        )

    def streams(self, instance: int = 1) -> Component:
        """Stream-processor instance `instance` (from 1); instances share the partitions as
        one consumer group, each with its own /metrics port, state and log."""
        s = self.settings
        port = self.streams_port(instance)
        name = "streams" if instance == 1 else f"streams-{instance}"
        env = {
            **s.service_env(),
            "LLMQ_METRICS_PORT": str(port),
            "LLMQ_PARTITIONS": str(s.partitions),
            "LLMQ_DATA_DIR": str(s.state_dir / name),
            "LLMQ_REPLICATION_FACTOR": str(min(s.brokers or 1, 3)),
        }
        return Component(
            Proc(name, [sys.executable, "-m", "streams"], self._run, env=env),
            ready=partial(_metric_is_one, port, "llmq_streams_ready"),
            endpoint=f"http://127.0.0.1:{port}/metrics",
            ports=(port,),
        )

    def streams_port(self, instance: int) -> int:
        """The /metrics port of stream-processor instance `instance`: the first takes the
        base port, further ones the ports after every worker replica's."""
        s = self.settings
        if instance == 1:
            return s.metrics_base_port
        models = len(self.catalog.names)
        replicas_end = s.metrics_base_port + 2 + models + models * (s.max_replicas - 1)
        return replicas_end + instance - 2

    def replica(self, spec: ModelSpec, replica: int) -> Component:
        """Replica `replica` (from 1) of the workers of `spec`, on its own /metrics port:
        the first of each model right after the stream processor's, then the autoscaler's,
        then the further replicas of each model in turn."""
        s = self.settings
        models = self.catalog.names
        i = models.index(spec.name)
        if replica == 1:
            port = s.metrics_base_port + 1 + i
        else:
            more = s.max_replicas - 1
            port = s.metrics_base_port + 2 + len(models) + i * more + (replica - 2)
        return self.worker(spec, port, replica)

    def replicas(self, spec: ModelSpec) -> list[Component]:
        """Every replica the stack may run of `spec`'s workers, from the first."""
        top = max(self.settings.max_replicas, 1)
        return [self.replica(spec, r) for r in range(1, top + 1)]

    @property
    def autoscaler_port(self) -> int:
        """The autoscaler's /metrics: right after the first worker of every model."""
        return self.settings.metrics_base_port + 1 + len(self.catalog.names)

    def autoscaler(self, env: Mapping[str, str] | None = None) -> Component:
        """The autoscaler with the local actuator (it starts and stops this stack's workers),
        with windows short enough to watch on one machine (but those set); `env` overrides
        its settings."""
        s = self.settings
        port = self.autoscaler_port
        env = {
            **s.service_env(),
            "LLMQ_METRICS_PORT": str(port),
            **s.autoscaler_windows(),
            **s.autoscaler_env,
            **(env or {}),
        }
        return Component(
            Proc("autoscaler", [sys.executable, "-m", "tools.stack.autoscale"], self._run, env),
            ready=partial(_metric_is_one, port, "llmq_autoscaler_ready"),
            endpoint=f"http://127.0.0.1:{port}/metrics",
            ports=(port,),
        )

    def gateway(
        self, port: int, name: str = "gateway", env: Mapping[str, str] | None = None
    ) -> Component:
        """The HTTP front door on 127.0.0.1:`port`; another instance has its own name (and
        may have settings of its own in `env`)."""
        settings = {
            **self.settings.service_env(),
            "LLMQ_API_PORT": str(port),
            "LLMQ_API_HOST": "127.0.0.1",
            "LLMQ_INSTANCE_ID": f"local-{name}",
            **(env or {}),
        }
        return Component(
            Proc(
                name, [sys.executable, "-m", "gateway"], self._run, stop_timeout_s=55, env=settings
            ),
            ready=partial(healthy, port),
            endpoint=f"http://127.0.0.1:{port}/v1",
            ports=(port,),
        )

    def worker(self, spec: ModelSpec, port: int, replica: int = 1) -> Component:
        """A worker of `spec` with its /metrics on `port`. Replica 1 is the stack's own;
        another (a scale-out) has its own name, pid file, log and worker id."""
        suffix = "" if replica == 1 else f"-{replica}"
        return Component(
            Proc(
                f"worker-{spec.name}{suffix}",
                [sys.executable, "-m", "workers"],
                self._run,
                stop_timeout_s=60,
                env={
                    **self.settings.service_env(),
                    "LLMQ_METRICS_PORT": str(port),
                    "LLMQ_MODEL": spec.name,
                    "LLMQ_WORKER_ID": f"local-{spec.name}{suffix}",
                    **(UNPINNED if replica > 1 else {}),
                },
            ),
            ready=partial(_metric_is_one, port, "llmq_worker_ready"),
            endpoint=f"http://127.0.0.1:{port}/metrics",
            ports=(port,),
            timeout_s=self.settings.worker_start_timeout_s,
        )

    def prepare(self, say: Callable[[str], None] = print) -> None:
        """Fetch the broker jars and prepare every model's checkpoint (slow only once)."""
        say(f"kafka jars: {kafka.fetch_libs(self.settings.cache_dir)}")
        for spec in self.catalog.models:
            if spec.source is None:
                say(f"model {spec.name}: served by {mask_url(spec.url or '')}")
                continue
            path = resolve_model_source(spec.source, self.settings.cache_dir / "models")
            say(f"model {spec.name}: {path}")

    def up(self, say: Callable[[str], None] = print) -> None:
        """Start what is not running and wait until all of it is ready; safe to repeat."""
        for line in unread(os.environ):  # the services would take the default instead
            say(f"warning: {line}")
        s = self.settings
        self._prepare_kafka()
        (s.state_dir / "redis").mkdir(parents=True, exist_ok=True)
        # A cluster's nodes need each other (a quorum) before any serves: start all, then wait.
        brokers = self.brokers
        self.start_all(brokers, say)
        outcome = ensure_topics(s.kafka_bootstrap, topic_plan(self.catalog.names, s.partitions))
        _refuse_other_partitions(outcome.mismatched, s)
        for comp in brokers:
            say(f"{comp.proc.name} ready at {comp.endpoint}")
        for comp in self.components()[len(brokers) :]:
            self.start(comp, say)
            say(f"{comp.proc.name} ready at {comp.endpoint}")

    def _prepare_kafka(self) -> None:
        """Write every node's config and format its storage once, all with one cluster id;
        refuse a shape other than the one this stack's Kafka was made with."""
        s = self.settings
        first = self.nodes[0].data_dir
        if (
            self._made_with is not None
            and self._made_with != s.brokers
            and (first / "meta.properties").is_file()
        ):
            raise StackError(
                f"this stack's Kafka was made with {self._made_with} broker(s) (its data is in "
                f"{first.parent}); run `llmq local down` and delete {s.state_dir}, or give "
                f"this one another LLMQ_STATE_DIR"
            )
        libs = kafka.fetch_libs(s.cache_dir)
        id_file = first.parent / "cluster-id"
        # An empty one was cut short by a crash (before it was written whole): Kafka refuses it.
        if not id_file.is_file() or not id_file.read_text().strip():
            first.parent.mkdir(parents=True, exist_ok=True)
            write_whole(id_file, kafka.new_cluster_id())
        voters = {node.node_id: node.controller_port for node in self.nodes}
        for node in self.nodes:
            props = kafka.write_config(
                node.data_dir, node.port, node.controller_port, node_id=node.node_id, voters=voters
            )
            kafka.format_storage(libs, props, node.data_dir, id_file.read_text().strip())
        write_whole(first.parent / BROKERS_FILE, str(s.brokers))

    def start(self, comp: Component, say: Callable[[str], None] = print) -> None:
        """Start one component unless it runs, and wait until it is ready."""
        self.start_all([comp], say)

    def start_all(self, comps: list[Component], say: Callable[[str], None] = print) -> None:
        """Start each component that is not running (one that runs with other settings is
        named), then wait until all are ready."""
        for comp in comps:
            proc = comp.proc
            if proc.pid() is None:
                _check_free(proc.name, comp.ports)
                say(f"starting {proc.name} (log: {proc.log_file})")
                proc.start()
            elif drift := proc.drift():
                say(
                    f"warning: {proc.name} runs with other settings than these "
                    f"({'; '.join(drift)}): `llmq local down`, then `llmq local up`, applies them"
                )
        for comp in comps:
            self._wait(comp.proc, comp.ready, comp.timeout_s, say)

    def down(self, say: Callable[[str], None] = print) -> None:
        """Stop everything, last started first, each gracefully (SIGTERM, then SIGKILL):
        the front door and the autoscaler (so it starts nothing more), every worker replica
        (also those started under another catalog or replica limit: any pid file this
        catalog does not name), then the rest."""
        comps = self.components()
        first = [c for c in comps if c.proc.name in ("gateway", "autoscaler")]
        workers = [c for spec in self.catalog.models for c in reversed(self.replicas(spec))]
        streams = [self.streams(n) for n in range(MAX_STREAMS, 0, -1)]
        brokers = self.brokers
        ordered = {c.proc.name for c in [*first, *workers, *streams, *brokers]}
        rest = [c for c in comps if c.proc.name not in ordered]
        strays = self._strays(ordered | {c.proc.name for c in comps})
        procs = [c.proc for c in [*reversed(first), *workers]]
        for proc in [*procs, *strays, *(c.proc for c in [*streams, *reversed(rest)])]:
            if proc.stop():
                say(f"stopped {proc.name}")
        # Together: a node stopped after the others would wait for a quorum that is gone.
        with ThreadPoolExecutor(len(brokers)) as pool:
            stopped = list(pool.map(lambda c: c.proc.stop(), brokers))
        for comp, was_running in zip(brokers, stopped, strict=True):
            if was_running:
                say(f"stopped {comp.proc.name}")

    def _strays(self, named: set[str]) -> list[Proc]:
        """Processes with a pid file here that no component of this stack names: workers of
        a catalog or replica limit the stack was started with, not this shell's."""
        files = sorted(self._run.glob("*.pid")) if self._run.is_dir() else []
        return [
            Proc(f.stem, (), self._run, stop_timeout_s=60) for f in files if f.stem not in named
        ]

    def status(self) -> list[ComponentStatus]:
        """What runs, and whether it is ready: every component, every worker replica that
        runs beyond the first, and what runs that this catalog does not name (its readiness
        unknown here: not ready)."""
        comps = self.components()
        named = {c.proc.name for c in comps}
        maybe = [c for spec in self.catalog.models for c in self.replicas(spec)]
        maybe += [self.streams(n) for n in range(1, MAX_STREAMS + 1)]
        extra = [c for c in maybe if c.proc.name not in named and c.proc.pid() is not None]
        out = []
        for comp in comps + extra:
            pid = comp.proc.pid()
            ready = pid is not None and comp.ready()
            out.append(
                ComponentStatus(comp.proc.name, pid, ready, comp.endpoint, str(comp.proc.log_file))
            )
        for proc in self._strays(named | {c.proc.name for c in maybe}):
            if (pid := proc.pid()) is not None:
                out.append(ComponentStatus(proc.name, pid, False, "-", str(proc.log_file)))
        return out

    def backlog(self) -> dict[str, float]:
        """Work records not yet done, per model, as the autoscaler last saw them (empty
        when it does not run)."""
        return self._autoscaler("llmq_autoscaler_backlog_records")

    def in_groups(self) -> dict[str, float]:
        """Workers in each model's group (serving), as the autoscaler last saw them."""
        return self._autoscaler("llmq_autoscaler_running_replicas")

    def _autoscaler(self, metric: str) -> dict[str, float]:
        if not self.settings.autoscale:
            return {}
        return _by_label(self.autoscaler_port, metric, "model")

    def pools(self) -> dict[str, tuple[int, int | None]]:
        """Each model's workers: how many run, and how many the autoscaler wants (None when
        it does not run)."""
        wanted = self._autoscaler("llmq_autoscaler_desired_replicas")
        out = {}
        for spec in self.catalog.models:
            running = sum(c.proc.pid() is not None for c in self.replicas(spec))
            desired = wanted.get(spec.name)
            out[spec.name] = (running, None if desired is None else int(desired))
        return out

    def _wait(
        self, proc: Proc, ready: Callable[[], bool], timeout_s: float, say: Callable[[str], None]
    ) -> None:
        start = time.monotonic()
        next_note = start + 15
        while not ready():
            if proc.pid() is None:
                raise StackError(
                    f"{proc.name} exited while starting; its log ({proc.log_file}) ends:\n"
                    f"{proc.tail()}"
                )
            now = time.monotonic()
            if now - start > timeout_s:
                knob = " (LLMQ_WORKER_START_TIMEOUT_S)" if proc.name.startswith("worker") else ""
                raise StackError(
                    f"{proc.name} not ready after {timeout_s:.0f}s{knob}; its log "
                    f"({proc.log_file}) ends:\n{proc.tail()}"
                )
            if now > next_note:
                say(f"  waiting for {proc.name} ({now - start:.0f}s)")
                next_note = now + 15
            time.sleep(0.25)


def _recorded_brokers(state_dir: Path) -> int | None:
    """How many brokers this state's Kafka was made with (None: not made yet)."""
    try:
        return int((state_dir / "kafka" / BROKERS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _refuse_other_partitions(mismatched: dict[str, int], s: LocalSettings) -> None:
    """Refuse topics made with another partition count than LLMQ_PARTITIONS (`mismatched`:
    their counts): the stream processor would be started with a count they do not have, and
    adding partitions moves keys, splitting copies from their coalescing entries."""
    if not mismatched:
        return
    by_count: dict[int, list[str]] = {}
    for name, count in mismatched.items():
        by_count.setdefault(count, []).append(name)
    have = "; ".join(f"{', '.join(names)} have {n} partitions" for n, names in by_count.items())
    back = f"set LLMQ_PARTITIONS={next(iter(by_count))} again, or " if len(by_count) == 1 else ""
    raise StackError(
        f"this stack's topics {have}, but LLMQ_PARTITIONS is {s.partitions}, and a topic's "
        f"count is fixed once it exists: {back}run `llmq local down` and delete "
        f"{s.state_dir} (all its Kafka and Redis data) to start afresh"
    )


def _check_free(name: str, ports: tuple[int, ...], grace_s: float = PORT_GRACE_S) -> None:
    """Refuse to start next to a stranger on our port (it would look ready, and is not ours).

    A process that was just killed may hold its ports for a moment: its main thread is a
    zombie while its other threads still exit (torch's take a few seconds). So a taken port
    is given `grace_s` to come free first.
    """
    deadline = time.monotonic() + grace_s
    taken = [port for port in ports if _port_open(port)]
    while taken and time.monotonic() < deadline:
        time.sleep(0.2)
        taken = [port for port in ports if _port_open(port)]
    if taken:
        raise StackError(
            f"cannot start {name}: port {taken[0]} is already in use by another process; "
            "stop it, or move the stack with LLMQ_KAFKA_PORT / LLMQ_REDIS_PORT / "
            "LLMQ_METRICS_BASE_PORT"
        )


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _redis_up(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def healthy(port: int) -> bool:
    """Whether the front door on `port` says it is ready."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _samples(port: int, name: str) -> list[Sample]:
    """The samples of one metric on a /metrics endpoint (none when it is down)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
            body: str = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return []
    families = text_string_to_metric_families(body)
    return [sample for family in families for sample in family.samples if sample.name == name]


def _by_label(port: int, name: str, label: str) -> dict[str, float]:
    """The values of one metric on a /metrics endpoint, by one label (empty when down)."""
    return {s.labels[label]: float(s.value) for s in _samples(port, name) if label in s.labels}


def _metric_is_one(port: int, name: str) -> bool:
    return any(sample.value == 1 for sample in _samples(port, name))

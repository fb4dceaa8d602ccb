"""Apache Kafka for the local stack: broker jars from Maven Central, one KRaft node or a
cluster of three."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEPLOY_KAFKA = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
JARS_LOCK = DEPLOY_KAFKA / "jars.sha256"
"""The checksum of every broker jar (made by `make lock`)."""


def libs_dir(cache_dir: Path) -> Path:
    """Where the broker's jars are cached, keyed by the pom's content."""
    pom = DEPLOY_KAFKA / "pom.xml"
    if not pom.is_file():
        raise FileNotFoundError(f"{pom} is missing: run llmq from a checkout of the repository")
    return cache_dir / f"kafka-{hashlib.sha256(pom.read_bytes()).hexdigest()[:12]}"


def fetch_libs(cache_dir: Path) -> Path:
    """The broker's jars, fetched once with Maven and checked against deploy/kafka/jars.sha256."""
    libs = libs_dir(cache_dir)
    if (libs / ".complete").is_file():
        return libs
    if shutil.which("mvn") is None:
        raise RuntimeError(
            "Maven (mvn) is needed once to fetch the Kafka jars: apt-get install maven"
        )
    tmp = libs.with_name(libs.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("fetching the Kafka broker jars with Maven into %s", libs)
    maven = subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(DEPLOY_KAFKA / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if maven.returncode != 0:  # Maven writes its [ERROR] lines to stdout
        said = (maven.stdout + maven.stderr).strip().splitlines()[-8:]
        raise RuntimeError(
            f"Maven could not fetch the Kafka jars (exit {maven.returncode}; it needs the "
            "network once): " + " / ".join(said)
        )
    verify_libs(tmp)
    (tmp / ".complete").write_text(libs.name)
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    return libs


def verify_libs(libs: Path) -> None:
    """Raise unless the jars in `libs` are exactly those locked in deploy/kafka/jars.sha256."""
    want = {
        name: digest
        for digest, name in (
            line.split() for line in JARS_LOCK.read_text().splitlines() if not line.startswith("#")
        )
    }
    have = {jar.name: hashlib.sha256(jar.read_bytes()).hexdigest() for jar in libs.glob("*.jar")}
    wrong = sorted(name for name in want.keys() | have.keys() if want.get(name) != have.get(name))
    if wrong:
        raise RuntimeError(
            f"the Kafka jars Maven fetched differ from {JARS_LOCK.name} ({', '.join(wrong[:5])}"
            f"{', ...' if len(wrong) > 5 else ''}): if deploy/kafka/pom.xml changed, run "
            "`make lock`; otherwise a repository served other bytes"
        )


@dataclass(frozen=True)
class SaslListener:
    """A second client listener, SASL_PLAINTEXT with mechanism PLAIN, for these users."""

    port: int
    users: Mapping[str, str]
    """username -> password."""

    def properties(self) -> list[str]:
        """The broker properties that add this listener (JAAS users inline)."""
        users = " ".join(f'user_{name}="{password}"' for name, password in self.users.items())
        return [
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config="
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};",
        ]


@dataclass(frozen=True)
class Node:
    """One KRaft node of the local cluster: broker and controller in one process."""

    node_id: int
    port: int
    """The client listener."""
    controller_port: int
    data_dir: Path

    @property
    def props(self) -> Path:
        """Its server.properties, beside its data directory."""
        return self.data_dir.parent / "server.properties"


def cluster_nodes(state_dir: Path, port: int, brokers: int) -> list[Node]:
    """The nodes of a local cluster of `brokers`: node 1 on `port` and `port + 1` with its
    data in state_dir/kafka/, node n two ports further and in state_dir/kafka-n/."""
    return [
        Node(
            n,
            port + 2 * (n - 1),
            port + 2 * (n - 1) + 1,
            state_dir / ("kafka" if n == 1 else f"kafka-{n}") / "data",
        )
        for n in range(1, brokers + 1)
    ]


def write_config(
    data_dir: Path,
    port: int,
    controller_port: int,
    sasl: SaslListener | None = None,
    *,
    node_id: int = 1,
    voters: Mapping[int, int] | None = None,
) -> Path:
    """One KRaft node's config (broker and controller in one process, loopback only),
    optionally with a SASL listener beside the plaintext one. `voters` (node id ->
    controller port) makes it one of a cluster: every llmq topic then gets as many replicas
    as there are nodes (up to 3), and a write needs two of them (min.insync.replicas), so
    the loss of one broker loses nothing and stops nothing."""
    data_dir.mkdir(parents=True, exist_ok=True)
    props = data_dir.parent / "server.properties"
    voters = voters or {node_id: controller_port}
    replicas = min(len(voters), 3)
    in_sync = 2 if replicas >= 3 else 1
    listeners = [f"PLAINTEXT://127.0.0.1:{port}"]
    if sasl is not None:
        listeners.append(f"SASL_PLAINTEXT://127.0.0.1:{sasl.port}")
    protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT" + (
        ",SASL_PLAINTEXT:SASL_PLAINTEXT" if sasl is not None else ""
    )
    quorum = ",".join(f"{n}@127.0.0.1:{p}" for n, p in sorted(voters.items()))
    props.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                f"node.id={node_id}",
                f"controller.quorum.voters={quorum}",
                f"listeners={','.join(listeners)},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners={','.join(listeners)}",
                "controller.listener.names=CONTROLLER",
                f"listener.security.protocol.map={protocols}",
                *(sasl.properties() if sasl is not None else []),
                f"log.dirs={data_dir}",
                "num.partitions=4",
                f"default.replication.factor={replicas}",
                f"min.insync.replicas={in_sync}",
                f"offsets.topic.replication.factor={replicas}",
                "offsets.topic.num.partitions=8",
                f"transaction.state.log.replication.factor={replicas}",
                f"transaction.state.log.min.isr={in_sync}",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                # Records carry prompts and answers: kept a day, and segments roll every six
                # hours, so a record goes within 30 h (a segment goes once its newest is old).
                "log.retention.hours=24",
                "log.roll.hours=6",
                "",
            ]
        )
    )
    return props


def format_storage(libs: Path, props: Path, data_dir: Path, cluster_id: str | None = None) -> None:
    """Format the KRaft storage once (every node of a cluster with the same `cluster_id`);
    a formatted directory is left as it is."""
    if (data_dir / "meta.properties").is_file():
        return
    done = subprocess.run(
        [
            "java",
            "-cp",
            f"{libs}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id or new_cluster_id(),
            "-c",
            str(props),
            "--ignore-formatted",
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:  # Java's own words (an old Java, a bad path), not a traceback
        why = (done.stderr or done.stdout).strip()[-2000:]
        raise RuntimeError(f"formatting Kafka's storage in {data_dir} failed: {why}")


def new_cluster_id() -> str:
    """A KRaft cluster id: 22 characters, as Kafka's own tool makes them."""
    return uuid.uuid4().hex[:22]


def broker_argv(libs: Path, props: Path) -> list[str]:
    """The command line of the broker."""
    return [
        "java",
        "-Xms256m",
        "-Xmx768m",
        "-XX:+UseG1GC",
        # C1 only: the local stack shares its cores with the engine and restarts often; C2's
        # compiling took about half of a fresh broker's CPU in a saturation run (BENCHMARKS.md).
        "-XX:TieredStopAtLevel=1",
        f"-Dlog4j2.configurationFile={DEPLOY_KAFKA / 'log4j2.yaml'}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(props),
    ]

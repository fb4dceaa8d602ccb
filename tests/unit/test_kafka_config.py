"""The local Kafka's configs: one node, or a KRaft cluster of three whose topics survive the
loss of one broker (replication factor 3, two in sync)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools.stack import kafka


def _props(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_one_node_keeps_one_replica(tmp_path: Path) -> None:
    props = _props(kafka.write_config(tmp_path / "data", 19092, 19093))
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["default.replication.factor"] == "1"
    assert props["min.insync.replicas"] == "1"
    assert props["offsets.topic.replication.factor"] == "1"


def test_a_cluster_of_three_replicates_everything_three_times_and_needs_two(
    tmp_path: Path,
) -> None:
    nodes = kafka.cluster_nodes(tmp_path, 19092, 3)
    assert [(n.node_id, n.port, n.controller_port) for n in nodes] == [
        (1, 19092, 19093),
        (2, 19094, 19095),
        (3, 19096, 19097),
    ]
    assert [n.data_dir for n in nodes] == [
        tmp_path / "kafka" / "data",
        tmp_path / "kafka-2" / "data",
        tmp_path / "kafka-3" / "data",
    ]
    voters = {n.node_id: n.controller_port for n in nodes}
    written = [
        _props(
            kafka.write_config(
                n.data_dir, n.port, n.controller_port, node_id=n.node_id, voters=voters
            )
        )
        for n in nodes
    ]
    quorum = "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    for node, props in zip(nodes, written, strict=True):
        assert props["node.id"] == str(node.node_id)
        assert props["controller.quorum.voters"] == quorum
        assert props["listeners"] == (
            f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
        )
        assert props["log.dirs"] == str(node.data_dir)
        for name in ("default.replication.factor", "offsets.topic.replication.factor",
                     "transaction.state.log.replication.factor"):  # fmt: skip
            assert props[name] == "3", name
        assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"


def test_a_maven_failure_says_mavens_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Maven writes its [ERROR] lines to stdout, which was thrown away: a fresh machine
    without the network saw a CalledProcessError traceback and no reason."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mvn = bin_dir / "mvn"
    mvn.write_text(
        "#!/bin/sh\necho '[ERROR] Could not resolve host: repo.maven.apache.org'\nexit 1\n"
    )
    mvn.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match=r"exit 1.*Could not resolve host"):
        kafka.fetch_libs(tmp_path / "cache")


def test_a_record_carrying_a_prompt_goes_within_30_hours(tmp_path: Path) -> None:
    """A segment goes once its newest record is past retention: without a roll sooner than
    Kafka's 7 days, a topic that never goes quiet kept prompts and answers a week."""
    props = _props(kafka.write_config(tmp_path / "data", 19092, 19093))
    assert int(props["log.retention.hours"]) + int(props["log.roll.hours"]) <= 30

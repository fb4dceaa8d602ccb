"""deploy/k8s/streams.yaml's memory: room for what the stream processor is measured to hold,
so that a replica whose semantic cache fills up is not OOM-killed."""

from __future__ import annotations

from pathlib import Path

import yaml

from streams.settings import StreamSettings

ROOT = Path(__file__).resolve().parents[2]
STARTED_MIB = 820
"""Peak RSS once started with the semantic cache on: the top of BENCHMARKS.md's runs
(Stream-processor memory, 756-820 MiB)."""
MIRROR_KIB_PER_ENTRY = 2.5
"""RSS a semantic cache mirror adds per entry: 240 MiB for 100,000 entries of 384-dimensional
vectors and 600-character questions, measured with ScopeMirror."""
MIRRORS_MIB = (
    StreamSettings.model_fields["semantic_max_mirrored"].default * MIRROR_KIB_PER_ENTRY / 1024
)
"""What the mirrors of one process may hold at LLMQ_SEMANTIC_MAX_MIRRORED's default."""
UNITS = {"Mi": 1, "Gi": 1024}


def _mib(quantity: str) -> int:
    return int(quantity[:-2]) * UNITS[quantity[-2:]]


def test_the_stream_processor_has_memory_for_its_semantic_cache() -> None:
    [deployment] = [
        d
        for d in yaml.safe_load_all((ROOT / "deploy/k8s/streams.yaml").read_text())
        if d["kind"] == "Deployment"
    ]
    configmap = yaml.safe_load((ROOT / "deploy/k8s/configmap.yaml").read_text())
    assert configmap["data"]["LLMQ_SEMANTIC_CACHE"] == "true"
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    resources = container["resources"]
    assert _mib(resources["requests"]["memory"]) >= STARTED_MIB
    assert _mib(resources["limits"]["memory"]) >= STARTED_MIB + MIRRORS_MIB

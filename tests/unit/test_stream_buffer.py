"""faust queues at most STREAM_BUFFER records for each agent's stream before it stops
fetching that partition: not its default 4,096, which with large prompts held hundreds of
megabytes a partition while an agent fell behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from streams.app import STREAM_BUFFER

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
from streams.app import build
from streams.settings import StreamSettings

print(build(StreamSettings(semantic_cache=False)).conf.stream_buffer_maxsize)
"""


def test_the_stream_processor_app_bounds_its_stream_buffers() -> None:
    """In a process of its own: build() patches aiokafka and prometheus_client for good."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip().splitlines()[-1]) == STREAM_BUFFER < 4096

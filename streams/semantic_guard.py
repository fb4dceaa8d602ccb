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
from collections.abc import Callable, Iterable
from difflib import SequenceMatcher
from functools import lru_cache
from itertools import pairwise

from streams import question_words as vocab
from streams.question import (
    Feature,
    Question,
    entities,
    every_word,
    negated,
    numbers,
    times,
    units,
)
from streams.wordnet import wordnet

ADDITION_SIMILARITY = 0.86
"""The lenient guard's similarity from which one question may ask with words the other
lacks ("What is a dividend?" / "What does dividend mean in investing?"); below it such a
pair is taken for another question ("How do I make sourdough bread?" / "Why is sourdough
bread sour?"). A qualifier ("early symptoms", "salt water") can pass it
(docs/semantic-cache.md)."""
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
    a, b = _read(query), _read(cached)
    left_over: list[tuple[list[str], list[str]]] = []

    def unexplained() -> tuple[list[str], list[str]]:
        if not left_over:
            left_over.append(_unexplained(a, b, synonyms=math.isfinite(additions_from)))
        return left_over[0]

    checks: list[tuple[str, Callable[[], bool]]] = [
        ("unread", lambda: not (a.unread or b.unread)),
        ("numbers", lambda: _agree(a, b, numbers)),
        ("negation", lambda: _agree(a, b, negated)),
        ("units", lambda: _agree(a, b, units)),
        ("times", lambda: _agree(a, b, times)),
        ("focus", lambda: _same_focus(a, b)),
        ("entities", lambda: _agree(a, b, entities, every_word)),
        ("code", lambda: a.code == b.code),
        ("form", lambda: _same_form(a, b)),
        ("direction", lambda: _same_direction(a, b) and not _turned(a, b, *unexplained())),
        ("order", lambda: not _swapped(a, b)),
        ("wording", lambda: not all(unexplained())),
        ("addition", lambda: similarity >= additions_from or not any(unexplained())),
    ]
    return next((name for name, ok in checks if not ok()), None)


@lru_cache(maxsize=4_096)
def _read(text: str) -> Question:
    """A question read once: a lookup compares the asked one with up to 8 candidates, and
    popular cached questions come back as candidates lookup after lookup."""
    return Question.read(text)


def _same_form(a: Question, b: Question) -> bool:
    """No mark of how they ask differs where both say it, and no preposition of one takes
    the place of another ("written by" / "written for", "sent to" / "sent by")."""
    return all(b.form.get(kind, mark) == mark for kind, mark in a.form.items()) and not (
        a.prepositions - b.prepositions and b.prepositions - a.prepositions
    )


def _same_focus(a: Question, b: Question) -> bool:
    """Both ask for the same kind of answer; "when" is any time. When one does not say, it
    asks with "what" or "which", whose noun says it ("Which people built..." / "Who
    built..."), or the other's question word is its own too ("How frequently..." / "How
    often..."): "How do salmon spawn?" / "Where do salmon spawn?" differ."""
    if not a.focus or not b.focus:
        return all(
            key[0] in vocab.STOPWORDS
            or key[0] in other.asked
            or not vocab.OPEN_QUESTION_WORDS.isdisjoint(other.asked)
            for q, other in ((a, b), (b, a))
            for key in q.focus_keys
        )
    if a.focus == b.focus:
        return True
    widen = {"time": vocab.ANY_TIME}
    return {w for k in a.focus for w in widen.get(k, {k})} >= b.focus or {
        w for k in b.focus for w in widen.get(k, {k})
    } >= a.focus


def _agree(a: Question, b: Question, feature: Feature, within: Feature | None = None) -> bool:
    """Whether each question's numbers (negations, units, ...) are among the other's
    (`within`, by default the same feature). Context that only one side gives may carry
    its own ("I'm 34 and just started investing. What is an expense ratio?" / "What does
    expense ratio mean?"): then only the asking parts' must be among the other's."""
    within = within or feature
    alone = a.has_context != b.has_context
    mine_a = feature(a, a.asked if alone else a.words)
    mine_b = feature(b, b.asked if alone else b.words)
    return mine_a <= within(b, b.words) and mine_b <= within(a, a.words)


def _same_direction(a: Question, b: Question) -> bool:
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


def _attached(q: Question) -> dict[str, list[tuple[int, str]]]:
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


def _first(q: Question, x: str) -> int:
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


def _swapped(a: Question, b: Question) -> bool:
    """Whether two words or phrases trade places ("Is the Moon bigger than Mercury?" / "Is
    Mercury bigger than the Moon?", "Are all squares rectangles?" / "Are all rectangles
    squares?"), unlike a phrase that moves ("What is the national animal of Scotland?" /
    "Scotland's national animal is what?"). Symmetric comparisons ("the difference between
    X and Y", "X vs Y") may swap; "the exchange rate between X and Y" may not."""
    if not (vocab.SYMMETRIC.isdisjoint(a.asked) or vocab.SYMMETRIC.isdisjoint(b.asked)):
        return False
    return _words_trade(a, b) or _stretches_trade(a, b)


def _words_trade(a: Question, b: Question) -> bool:
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


def _slots(q: Question, i: int) -> set[tuple[int, str]]:
    """A word's neighbours: the words just before and just after it."""
    return {(d, q.words[i + d]) for d in (-1, 1) if 0 <= i + d < len(q.words)}


def _stretches_trade(a: Question, b: Question) -> bool:
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


def _said(q: Question, words: tuple[str, ...]) -> list[str]:
    """The words that say something (no stopwords or generic words), in order."""
    return [w for w in words if w in q.content and w not in vocab.GENERIC]


def _matches(a: list[str], b: list[str]) -> bool:
    """Every word of each has a like word in the other."""
    return all(any(_close(x, y) for y in b) for x in a) and all(
        any(_close(x, y) for x in a) for y in b
    )


def _turned(a: Question, b: Question, left: list[str], right: list[str]) -> bool:
    """Whether the asking part has a word of direction without a counterpart ("Flights to
    Paris" / "Flights from Paris", "turn on" / "turn off")."""
    alone = set(left) & set(a.asked) | set(right) & set(b.asked)
    return not vocab.PARTICLES.isdisjoint(alone)


def _unexplained(a: Question, b: Question, synonyms: bool) -> tuple[list[str], list[str]]:
    """The content words of each side that have no counterpart in the other: not the same
    word and, for the lenient guard (`synonyms`), no WordNet synonym of a word (or word
    pair) left over on the other side. The strict guard takes no synonyms: WordNet 1.6 also
    links "brother" / "sister", "thread" / "string" and "bike" / "motorcycle". Generic
    words go, unless one takes the place of another (`_replaced`)."""
    left, right = _orphans(a, b), _orphans(b, a)
    if synonyms:
        grams_a, grams_b = _grams(a.words, left), _grams(b.words, right)
        net = wordnet()

        def alone(x: str, words: tuple[str, ...], others: set[str]) -> bool:
            return not any(net.synonyms(g, y) for g in _grams(words, [x]) for y in others)

        left, right = (
            [x for x in left if alone(x, a.words, grams_b)],
            [y for y in right if alone(y, b.words, grams_a)],
        )
    return (
        [x for x in left if x not in vocab.GENERIC or _replaced(a, x, b, right)],
        [y for y in right if y not in vocab.GENERIC or _replaced(b, y, a, left)],
    )


def _replaced(q: Question, x: str, other: Question, theirs: list[str]) -> bool:
    """Whether the other side leaves a generic word of its own ("get a refund" / "give a
    refund") or a word in the place of `x`, a neighbour shared ("good for you" / "bad for
    you", "give blood" / "receive blood"), so that generic `x` says something; a question
    word the focus check compared does not count ("which people built" / "who built")."""
    return any(
        y in vocab.GENERIC
        or (
            y not in other.focus_words
            and any(
                _slots(q, i) & _slots(other, k) for i in q.positions[x] for k in other.positions[y]
            )
        )
        for y in theirs
    )


def _orphans(q: Question, other: Question) -> list[str]:
    """Content words of `q` without the same word (up to inflection or a typo) in `other`,
    leaving out agreeing question words."""
    agree = q.focus and other.focus and _same_focus(q, other)
    ignored = q.focus_words if agree else frozenset()
    return [
        x
        for x in q.content
        if x not in ignored and x not in other.content and not _among(x, other.content)
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
    ("largest" / "large"), or, when exactly one of them is a word WordNet knows, one typo
    ("pyhton" / "python"); two known words with other lemmas never are ("proton" / "photon",
    "plane" / "planet"), nor two unknown ones ("openssl" / "openssh"); never across digits
    ("python2" / "python3")."""
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
    return bool(lemmas_a) != bool(lemmas_b) and _typo(a, b)


def _typo(a: str, b: str) -> bool:
    """One inserted, deleted, replaced or swapped letter in a long word that keeps its first
    letter ("pyhton", "spidres")."""
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

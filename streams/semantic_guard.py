"""The semantic cache's guard: whether a cached question's answer answers the asked one.

Embedding similarity finds candidates but cannot tell "5 miles to km" from "5 km to miles"
(0.993). The guard reads both questions: first what must be equal for one answer to serve
both (numbers, negations, units, dates and times, named entities, what kind of thing is
asked for, and who does what to whom), then whether every remaining word of one has a
counterpart in the other: the same word up to inflection or a typo, a WordNet synonym, or
a word that changes no answer ("please", "explain", "which"). A word of each side left
without a counterpart ("tall" / "old", "causes" / "symptoms") rejects the candidate; words
on one side only (context, a restated preamble) do not (docs/semantic-cache.md).
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

from streams.wordnet import wordnet


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Function words, generic question words and politeness: words whose presence or absence
# does not change what is asked. Words that do ("from", "than", "before", "who", "which",
# "more", ordinals, negations) are deliberately not here.
_STOPWORDS = _words("""
    a an the is are was were be been being am do does did have has had i me my you your u ur
    we us our it its this that these those there here what whats wat how hows can could
    would should will shall may might must please pls plz tell explain know like want id im
    ive youre thats to of in on at for with by and or as some any many much quick question
    hey hi hello thanks thank thx so just really
""")
# Words that name nothing asked about ("the best way to", "give me", "the process for").
_GENERIC = _words("""
    which best way ways get got need people make use good give basic describe define
    definition meaning mean state process if whether they them okay
""")
_NEGATIONS = _words("""
    not no never none nothing nor neither without cannot cant dont doesnt didnt isnt arent
    wasnt werent wont wouldnt shouldnt couldnt havent hasnt hadnt mustnt
""")
_CARDINALS = """
    zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
    fifteen sixteen seventeen eighteen nineteen twenty
"""
_NUMBER_WORDS = {word: str(value) for value, word in enumerate(_CARDINALS.split())} | {
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70",
    "eighty": "80", "ninety": "90", "hundred": "100", "thousand": "1000", "million": "1e6",
    "billion": "1e9", "half": "0.5", "quarter": "0.25", "dozen": "12", "twice": "2x",
    "double": "2x", "triple": "3x",
}  # fmt: skip
_ORDINAL_WORDS = "first second third fourth fifth sixth seventh eighth ninth tenth eleventh"
_ORDINALS = {word: str(value) for value, word in enumerate(_ORDINAL_WORDS.split(), start=1)}
_NUMBER = re.compile(r"(\d+(?:\.\d+)?)(?:st|nd|rd|th)?")
_TIMES = _words("""
    january february march april may june july august september october november december
    jan feb mar apr jun jul aug sep sept oct nov dec monday tuesday wednesday thursday friday
    saturday sunday weekday weekdays weekend weekends today tomorrow yesterday tonight morning
    afternoon evening night nightly noon midnight am pm hourly weekly monthly yearly annually
    spring summer autumn fall winter
""")
_DAILY = {"daily": "day", "everyday": "day"}
# Units by their canonical name (the first of each group).
_UNIT_GROUPS = """
    mile miles mi|kilometer kilometers kilometre kilometres km kms|meter meters metre metres m
    |centimeter centimeters cm|millimeter millimeters mm|foot feet ft|inch inches|yard yards
    |gram grams g|kilogram kilograms kg kgs kilo kilos|pound pounds lb lbs|ounce ounces oz
    |ton tons tonne tonnes|liter liters litre litres l|milliliter milliliters ml
    |gallon gallons|cup cups|tablespoon tablespoons tbsp|teaspoon teaspoons tsp|pint pints
    |quart quarts|celsius centigrade c|fahrenheit f|kelvin k|second seconds sec secs s
    |millisecond milliseconds ms|microsecond microseconds|nanosecond nanoseconds ns
    |minute minutes min mins|hour hours hr hrs|day days|week weeks|month months|year years
    |decade decades|century centuries|byte bytes|bit bits|kilobyte kilobytes kb
    |megabyte megabytes mb|gigabyte gigabytes gb|terabyte terabytes tb|dollar dollars usd
    |euro euros eur|yen jpy|percent percentage|mph|kph kmh|calorie calories kcal
    |joule joules|watt watts|volt volts|amp amps ampere amperes|hertz hz|acre acres
    |hectare hectares|knot knots|degree degrees|radian radians|milligram milligrams mg
    |microgram micrograms mcg
"""
_UNITS = {word: group.split()[0] for group in _UNIT_GROUPS.split("|") for word in group.split()}
# Short forms that are units only after a number ("5 m", not "m").
_AMBIGUOUS_UNITS = _words("m g l c f k s min in")
# A unit word names the unit of the answer after these ("in feet", "how many miles"); alone
# ("What year...?") it is part of the question.
_UNIT_INTRODUCERS = _words("in into to per a an many much of from")
# What kind of thing a question asks for, by its question words.
_FOCUS = {
    ("who",): "person", ("whom",): "person", ("whose",): "possessor", ("when",): "time",
    ("where",): "place", ("why",): "reason", ("reason",): "reason", ("reasons",): "reason",
    ("how", "many"): "amount", ("how", "much"): "amount", ("number", "of"): "amount",
    ("how", "long"): "duration", ("how", "many", "minutes"): "duration",
    ("how", "many", "hours"): "duration", ("how", "many", "days"): "duration",
    ("how", "many", "weeks"): "duration", ("how", "many", "years"): "duration",
    ("distance",): "distance", ("how", "old"): "age", ("how", "far"): "distance",
    ("how", "often"): "frequency", ("what", "time"): "time", ("what", "year"): "time",
    ("which", "year"): "time", ("what", "day"): "time", ("what", "causes"): "reason",
    ("point", "of"): "reason",
}  # fmt: skip
_COMPARING = _words("difference differences differ differs different between vs versus compare")
# After these, the next content word says who or what plays which part ("from A to B").
_DIRECTIONAL = _words("to from into onto than vs versus over under before after by for of")
_TURNS = _words("to from than into onto against toward towards off out up down")
_PRONOUNS = _words("me you him her us them myself yourself himself herself")
# "Who did X succeed?" asks for the one done to, "Who succeeded X?" for the doer.
_ASKS_OBJECT = frozenset(
    (who, aux) for who in ("who", "whom") for aux in ("did", "does", "do", "will", "would")
)
_POSSESSIVE = re.compile(r"'s$")
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:['_][A-Za-z0-9]+)*|[+\-*/%=<>!&|^~$]+")
_TYPO_MIN_CHARS = 6
_PREFIX_MIN_CHARS = 5
ADDITION_SIMILARITY = 0.86
"""The lenient guard's similarity from which one question may ask with words the other
lacks ("What is a dividend?" / "What does dividend mean in investing?"); below it such a
pair is taken for another question ("How do I make sourdough bread?" / "Why is sourdough
bread sour?"). A qualifier ("early symptoms", "salt water") can pass it (docs/semantic-cache.md)."""


def same_question(
    query: str, cached: str, similarity: float = 1.0, additions_from: float = math.inf
) -> bool:
    """Whether an answer to `cached` may answer `query` (see `mismatch`)."""
    return mismatch(query, cached, similarity, additions_from) is None


def mismatch(
    query: str, cached: str, similarity: float = 1.0, additions_from: float = math.inf
) -> str | None:
    """Why an answer to `cached` may not answer `query`, or None when it may: the name of
    the first check that fails ("numbers", "negation", "units", "times", "focus",
    "entities", "direction", "order", "wording", "addition").

    A word that one side adds to the sentence that asks ("What is the boiling point of salt
    water?") usually narrows the question, so it fails unless the two questions' cosine
    `similarity` is at least `additions_from` (never, by default; ADDITION_SIMILARITY is
    the lenient choice, measured in docs/semantic-cache.md)."""
    a, b = _Question.read(query), _Question.read(cached)
    checks: list[tuple[str, Callable[[], bool]]] = [
        ("numbers", lambda: _agree(a, b, _numbers)),
        ("negation", lambda: _agree(a, b, _negated)),
        ("units", lambda: _agree(a, b, _units)),
        ("times", lambda: _agree(a, b, _times)),
        ("focus", lambda: not (a.focus and b.focus) or a.focus == b.focus),
        ("entities", lambda: _agree(a, b, _entities, _all)),
        ("direction", lambda: _same_direction(a, b) and not _turned(a, b, *_unexplained(a, b))),
        ("order", lambda: not _swapped(a, b)),
        ("wording", lambda: not all(_unexplained(a, b))),
        (
            "addition",
            lambda: similarity >= additions_from or not _asks_more(a, b, *_unexplained(a, b)),
        ),
    ]
    return next((name for name, ok in checks if not ok()), None)


@dataclass(frozen=True)
class _Question:
    """One question's words: lower case, apostrophes dropped, with its named entities."""

    words: tuple[str, ...]
    entities: frozenset[str]
    asked: tuple[str, ...]
    """The words of the sentence that asks: the last with a question mark, else the last."""

    @classmethod
    def read(cls, text: str) -> _Question:
        text = unicodedata.normalize("NFKC", text).replace("\u2019", "'")
        text = re.sub(r"(?<=[A-Za-z0-9])[-/](?=[A-Za-z0-9])", " ", text)  # 32-bit, 50/30/20
        text = re.sub(r"!+(?=\s|$)", " ", text)  # an exclamation mark, not the "!" operator
        text = text.replace("%", " percent ")
        words, entities = [], set()
        for match in _TOKEN.finditer(text):
            token = match.group()
            word = _POSSESSIVE.sub("", token.lower()).replace("'", "")
            before = text[: match.start()].rstrip()
            starts_sentence = not before or before[-1] in ".?!:\n\"'("
            if (
                re.search(r"[A-Z]", token[1:])  # JavaScript, iPhone, NYC
                or (re.search(r"\d", token) and re.search(r"[A-Za-z]", token))  # EU261, ipv4
                or "_" in token
                or (
                    token[0].isupper()
                    and not starts_sentence
                    and token != "I"
                    and (word not in _STOPWORDS or len(token) == 1)  # "Thanks", blood type "A"
                )
            ):
                entities.add(word)
            words.append(word)
        sentences = [s for s in re.split(r"(?<=[.?!:])\s+|\n+", text) if s.strip()]
        asked = next(
            (s for s in reversed(sentences) if "?" in s), sentences[-1] if sentences else ""
        )
        asked_words = tuple(t.lower().replace("'", "") for t in _TOKEN.findall(asked))
        return cls(tuple(words), frozenset(entities), asked_words)

    @cached_property
    def content(self) -> tuple[str, ...]:
        """The words that carry meaning: no stopwords or negations; entities always."""
        return tuple(
            _NUMBER_WORDS.get(w, w)
            for w in self.words
            if (w not in _STOPWORDS and w not in _NEGATIONS) or w in self.entities
        )

    @property
    def has_context(self) -> bool:
        """Whether sentences other than the asking one come with the question."""
        return len(self.asked) < len(self.words)

    @cached_property
    def focus(self) -> frozenset[str]:
        """What kind of answer is asked for: a person, a time, an amount, a comparison..."""
        words = self.asked
        kinds = {
            kind
            for i in range(len(words))
            for key, kind in _FOCUS.items()
            if words[i : i + len(key)] == key
        }
        if not _COMPARING.isdisjoint(words):
            kinds.add("comparison")
        return frozenset(kinds)

    @cached_property
    def focus_words(self) -> frozenset[str]:
        """The words that say what kind of answer is asked for."""
        found = {w for key in _FOCUS for w in key if w in self.asked}
        if "comparison" in self.focus:
            found |= _COMPARING | {"from", "and"}
        return frozenset(found)


Feature = Callable[[_Question, tuple[str, ...]], Counter[str]]
"""Something a question mentions, counted: its numbers, units, named entities..."""


def _agree(a: _Question, b: _Question, feature: Feature, within: Feature | None = None) -> bool:
    """Whether each question's numbers (negations, units, ...) are among the other's
    (`within`, by default the same feature). Context that only one side gives may carry
    its own ("I'm 34 and just started investing. What is an expense ratio?" / "What does
    expense ratio mean?"): then only the asking sentences' must be among the other's."""
    within = within or feature
    alone = a.has_context != b.has_context
    mine_a = feature(a, a.asked if alone else a.words)
    mine_b = feature(b, b.asked if alone else b.words)
    return mine_a <= within(b, b.words) and mine_b <= within(a, a.words)


def _numbers(_: _Question, words: tuple[str, ...]) -> Counter[str]:
    """Numbers, number words and ordinals as digits ("fifth" -> "5"), as often as they
    occur; "one" is too often a pronoun to count."""
    found: Counter[str] = Counter()
    for word in words:
        if match := _NUMBER.fullmatch(word):
            found[match.group(1)] += 1
        elif word != "one" and (word in _NUMBER_WORDS or word in _ORDINALS):
            found[_NUMBER_WORDS.get(word) or _ORDINALS[word]] += 1
    return found


def _negated(q: _Question, words: tuple[str, ...]) -> Counter[str]:
    """What each negation applies to: the next content word ("not null" -> "null")."""
    return _once(
        next((x for x in words[i + 1 :] if x in q.content and x not in _NEGATIONS), "")
        for i, w in enumerate(words)
        if w in _NEGATIONS
    )


def _units(_: _Question, words: tuple[str, ...]) -> Counter[str]:
    """Units the answer is in: after a number or "in", "per", "how many"..."""
    found = set()
    for before, word in zip(("", *words), words, strict=False):
        after_number = before[:1].isdigit() or before in _NUMBER_WORDS
        if word in _UNITS and (
            after_number or (before in _UNIT_INTRODUCERS and word not in _AMBIGUOUS_UNITS)
        ):
            found.add(_UNITS[word])
    return _once(found)


def _times(_: _Question, words: tuple[str, ...]) -> Counter[str]:
    """Months, days, seasons and times of day; "daily" is "day"."""
    return _once(_DAILY.get(w, w) for w in words if w in _TIMES or w in _DAILY)


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
    "convert a tuple to a list", "from me to a colleague" / "from a colleague to me"), and
    both ask for the doer or both for the one done to ("Who succeeded X?" / "Who did X
    succeed?")."""
    if _asks_object(a) != _asks_object(b):
        return False
    for word in _DIRECTIONAL.intersection(a.words, b.words):
        after_a, after_b = _after(a, word), _after(b, word)
        order_a, order_b = [x for _, x in after_a], [y for _, y in after_b]
        if _reordered(order_a, order_b):  # "in Sydney ... in Los Angeles", swapped
            return False
        for i, x in after_a:
            for k, y in after_b:
                if (
                    not _close(x, y)
                    and not any(_close(x, z) for _, z in after_b)
                    and not any(_close(y, z) for _, z in after_a)
                    and _among(x, b.words[:k])
                    and _among(y, a.words[:i])
                ):
                    return False
    # A word after one directional word here and after another there ("to your service
    # from another registrar" / "from your service to another registrar").
    turns_a = {(d, x) for d in _TURNS for _, x in _after(a, d)}
    turns_b = {(d, y) for d in _TURNS for _, y in _after(b, d)}
    return not any(
        d != e and _close(x, y) and not _turns(turns_a, e, x) and not _turns(turns_b, d, y)
        for d, x in turns_a
        for e, y in turns_b
    )


def _turns(turns: set[tuple[str, str]], word: str, x: str) -> bool:
    """Whether a word like `x` also follows `word`."""
    return any(d == word and _close(x, y) for d, y in turns)


def _reordered(a: list[str], b: list[str]) -> bool:
    """The same words in another order."""
    if len(a) != len(b) or len(a) < 2:
        return False
    pairs = list(zip(a, b, strict=True))
    same_bag = sorted(a) == sorted(b)
    return same_bag and not all(_close(x, y) for x, y in pairs)


def _asks_object(q: _Question) -> bool:
    """Whether the question asks for whom something was done ("Who did X succeed?")."""
    return any(pair in _ASKS_OBJECT for pair in pairwise(q.asked))


def _after(q: _Question, word: str) -> list[tuple[int, str]]:
    """Each `word` in `q` (its index) with the first content word or pronoun after it."""
    found = []
    for i, w in enumerate(q.words):
        if w == word:
            nxt = next((x for x in q.words[i + 1 :] if x in q.content or x in _PRONOUNS), "")
            if nxt:
                found.append((i, nxt))
    return found


def _among(word: str, words: tuple[str, ...]) -> bool:
    return any(_close(word, w) for w in words)


def _swapped(a: _Question, b: _Question) -> bool:
    """Whether two words or phrases trade places ("Is the Moon bigger than Mercury?" / "Is
    Mercury bigger than the Moon?", "in Sydney ... in Los Angeles", swapped), unlike a
    phrase that moves ("What is the national animal of Scotland?" / "Scotland's national
    animal is what?"). Symmetric comparisons ("X vs Y") may swap."""
    if "comparison" in a.focus and "comparison" in b.focus:
        return False
    return _words_trade(a, b) or _stretches_trade(a, b)


def _words_trade(a: _Question, b: _Question) -> bool:
    """Two words said once on each side trade places, each taking the other's neighbours."""
    once = [
        (i, w)
        for i, w in enumerate(a.words)
        if w in a.content and w not in _GENERIC and len(_places(a, w)) == len(_places(b, w)) == 1
    ]
    for i, x in once:
        for j, y in once:
            if j <= i or _close(x, y):
                continue
            (k,), (m,) = _places(b, y), _places(b, x)
            if k < m and _slots(a, i) & _slots(b, k) and _slots(a, j) & _slots(b, m):
                return True
    return False


def _places(q: _Question, word: str) -> list[int]:
    return [i for i, w in enumerate(q.words) if _close(word, w)]


def _slots(q: _Question, i: int) -> set[tuple[int, str]]:
    """A word's neighbours: the words just before and just after it."""
    return {(d, q.words[i + d]) for d in (-1, 1) if 0 <= i + d < len(q.words)}


def _stretches_trade(a: _Question, b: _Question) -> bool:
    """Aligned word by word, two changed stretches each say what the other said ("in
    Sydney, ... in Los Angeles" / "in Los Angeles, ... in Sydney")."""
    matcher = SequenceMatcher(None, a.words, b.words, autojunk=False)
    changed = [
        (_said(a, a.words[i1:i2]), _said(b, b.words[j1:j2]))
        for op, i1, i2, j1, j2 in matcher.get_opcodes()
        if op == "replace"
    ]
    changed = [(x, y) for x, y in changed if x and y]
    return any(
        _matches(x1, y2) and _matches(x2, y1) and not _matches(x1, y1)
        for n, (x1, y1) in enumerate(changed)
        for x2, y2 in changed[n + 1 :]
    )


def _said(q: _Question, words: tuple[str, ...]) -> list[str]:
    """The words of a stretch that say something (no stopwords or generic words)."""
    return [w for w in words if w in q.content and w not in _GENERIC]


def _matches(a: list[str], b: list[str]) -> bool:
    """Every word of each has a like word in the other."""
    return all(_among(x, tuple(b)) for x in a) and all(_among(y, tuple(a)) for y in b)


def _asks_more(a: _Question, b: _Question, left: list[str], right: list[str]) -> bool:
    """Whether a word without a counterpart is in the sentence that asks, not in context."""
    return not set(a.asked).isdisjoint(left) or not set(b.asked).isdisjoint(right)


def _turned(a: _Question, b: _Question, left: list[str], right: list[str]) -> bool:
    """Whether the sentence that asks has a word of direction without a counterpart
    ("Flights to Paris" / "Flights from Paris", "turn on" / "turn off": "to" and "on" are
    function words, "from" and "off" are not)."""
    return not _TURNS.isdisjoint(set(left) & set(a.asked) | set(right) & set(b.asked))


@lru_cache(maxsize=64)
def _unexplained(a: _Question, b: _Question) -> tuple[list[str], list[str]]:
    """The content words of each side that have no counterpart in the other: neither the
    same word nor a WordNet synonym of a word (or word pair) left over on the other side."""
    left, right = _orphans(a, b), _orphans(b, a)
    grams_a, grams_b = _grams(a.words, left), _grams(b.words, right)
    net = wordnet()
    return (
        [
            x
            for x in left
            if not any(net.synonyms(g, y) for g in _grams(a.words, [x]) for y in grams_b)
        ],
        [
            y
            for y in right
            if not any(net.synonyms(g, x) for g in _grams(b.words, [y]) for x in grams_a)
        ],
    )


def _orphans(q: _Question, other: _Question) -> list[str]:
    """Content words of `q` without the same word (up to inflection or a typo) in `other`,
    leaving out words that change no answer."""
    ignored = _GENERIC | (q.focus_words if q.focus == other.focus else frozenset())
    return [
        x for x in q.content if x not in ignored and not any(_close(x, y) for y in other.content)
    ]


def _grams(words: tuple[str, ...], among: list[str]) -> set[str]:
    """The words of `among`, and the pairs of neighbouring words with one of them in it, the
    way WordNet writes them ("heart_rate", "come_up"); pairs skip stopwords."""
    kept = [w for w in words if w not in _STOPWORDS]
    pairs = {f"{x}_{y}" for x, y in pairwise(kept) if x in among or y in among}
    return set(among) | pairs


@lru_cache(maxsize=65_536)
def _close(a: str, b: str) -> bool:
    """The same word up to inflection ("cacti" / "cactus", "composed" / "composer") or one
    typo ("capitol" / "capital"); never across digits ("python2" / "python3")."""
    if a == b:
        return True
    if any(c.isdigit() for c in a + b):
        return False
    common = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    if common >= _PREFIX_MIN_CHARS and common >= 0.75 * min(len(a), len(b)):
        return True
    return _typo(a, b) or not wordnet().lemmas(a).isdisjoint(wordnet().lemmas(b))


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

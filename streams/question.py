"""One question as the semantic cache's guard reads it (streams/semantic_guard.py): its
words, named entities, where the sentence that asks begins, what it asks for and how, and
what it mentions (numbers, negations, units, times, entities)."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise

from lemminflect import getAllLemmas  # type: ignore[import-untyped]

from streams import question_words as vocab

_TOKEN = re.compile(r"_*[A-Za-z0-9]+(?:['_][A-Za-z0-9]+)*_*|[+\-*/%=<>!&|^~$]+")
# A hyphen or slash inside words ("32-bit", "and/or") separates them; between digits
# ("10/2", "10-2") it is an operator.
_JOINER = re.compile(r"(?<=[A-Za-z])[-/](?=[A-Za-z0-9])|(?<=[0-9])[-/](?=[A-Za-z])")
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+|\n+")
# A period after these ends no sentence ("3 p.m. is", "e.g. codeine", "Washington D.C.").
_ABBREVIATION = re.compile(r"(?:\b[A-Za-z]|e\.g|i\.e|a\.m|p\.m|dr|mr|mrs|ms|vs|etc|no|st)\.$", re.I)
# Code: a question with these is compared by its signs and digits too ("a[1:]" / "a[:1]").
_CODE = re.compile(r"[\[\]{}=<>#@*+^~|`]|\w\(|\w\.\w")
_SIGNS = {"\u00b0": " degrees ", "\u20ac": " euro ", "\u00a3": " pound ", "\u00d7": " x "}
_NUMBER = re.compile(r"(\d+(?:_\d+)*)(?:st|nd|rd|th)?")


@dataclass(frozen=True)
class Question:
    """One question's words: lower case, apostrophes dropped, number words as digits, with
    its named entities and where the sentence that asks begins."""

    words: tuple[str, ...]
    entities: frozenset[str]
    start: int
    """The index of the first word that asks: words before it are context. The asking part
    runs from the last sentence with a question mark to the end; with none, all of it."""
    unread: bool
    """Letters or symbols the guard cannot read (another script, emoji)."""
    code: str
    """For a question with code in it, its signs and digits in order ("[1:]"), else ""."""

    @classmethod
    def read(cls, text: str) -> Question:
        text = _normalised(text)
        unread = _unread(text)
        text = _JOINER.sub(" ", text)
        text = re.sub(r"!+(?=\s|$)", " ", text)  # an exclamation mark, not the "!" operator
        text = text.replace("%", " percent ")
        asks_at = _asking_offset(text)
        code = re.sub(r"[A-Za-z\s]+", "", text).rstrip("?.!") if _CODE.search(text) else ""
        words: list[str] = []
        entities, start, end, spelled, previous = set(), 0, 0, False, ""
        for match in _TOKEN.finditer(text):
            token = match.group()
            word = re.sub(r"'s$", "", token.lower()).replace("'", "")
            gap = text[end : match.start()]
            if word in vocab.SPELLED_NUMBERS and spelled and not gap.strip():
                words[-1] += "_" + vocab.SPELLED_NUMBERS[word]  # "twenty one" is one number
                end = match.end()
                continue
            spelled = word in vocab.SPELLED_NUMBERS
            word = vocab.NUMBER_WORDS.get(word, word)
            starts_sentence = end == 0 or any(c in ".?!:\n\"'(" for c in gap)
            after_dash = previous == "-" and not gap  # a flag: "cp -a"
            end, previous = match.end(), token
            if after_dash and len(token) == 1:  # a flag keeps its case: "-i" is not "-I"
                word = token
            if _named(token, word, starts_sentence) or (after_dash and len(token) == 1):
                entities.add(word)
            if match.start() < asks_at:
                start += 1
            words.append(word)
        return cls(tuple(words), frozenset(entities), start, unread, code)

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
        """How the asking part asks. Marked where it says: its tense ("is" / "was" / "will"),
        obligation or ability ("should" / "can"), quantity ("any" / "many"), "and" or "or",
        and for a question that starts with a question word, whether it asks for the doer
        ("Who succeeded X?", "What eats sharks?") or the one done to ("Who did X
        succeed?"). Always marked: whether it is a yes-or-no question and its first
        auxiliary ("Does X work?" / "How does X work?", "Do cats..." / "Can cats..."),
        whether someone else is meant ("Do they love me?" / "Do you love me?"), the voice of
        a yes-or-no question ("Did Apple buy Beats?" / "Was Apple bought by Beats?"), an
        intensifier ("so much") and, for a yes-or-no question, its quantity, "none" without
        one ("Are mushrooms poisonous?" / "Are some mushrooms..."). Marked where both say
        it: whose ("my" / "your"), whose each noun is ("my IP address" / "an IP address")
        and who a form of "be" speaks of ("Who are you?" / "Who am I?")."""
        words, asked = set(self.asked), self.asked
        opening = asked[:3] if len(asked) > 2 and asked[1] == "you" else asked[:1]
        request = len(opening) == 3 and opening[2] in vocab.REQUESTS  # "Can you explain..."
        first = asked[0] if asked and not request else ""
        marks = {
            "tense": _one_of(words, vocab.TENSES),
            "mood": _one_of(words | ({"must"} if _has_to(asked) else set()), vocab.MOODS),
            "quantity": _one_of(words, vocab.QUANTIFIERS)
            or ("none" if first in vocab.LEADING_AUXILIARIES and not _counted(words) else ""),
            "joined": _one_of(words, {"and": frozenset({"and"}), "or": frozenset({"or"})}),
            "closed": "yes" if first in vocab.LEADING_AUXILIARIES else "no",
            "leads": vocab.LEADING_AUXILIARIES.get(first, ""),
            "whose": _one_of(words, vocab.POSSESSIVES),
            "person": _one_of(_beside_be(asked), vocab.PERSONS),
            "third": "yes" if words & vocab.THIRD_PERSON else "no",
            "voice": ("passive" if _passive(asked) else "active")
            if first in vocab.LEADING_AUXILIARIES else "",
            "intense": "yes" if any(w in vocab.INTENSIFIERS and x in ("much", "many")
                                    for w, x in pairwise(asked)) else "no",
        }  # fmt: skip
        for determiner, noun in pairwise(asked):
            if mark := _one_of({determiner}, vocab.DETERMINERS):
                marks[f"whose {noun}"] = mark
        if len(asked) > 2 and asked[0] in vocab.QUESTION_WORDS:
            # "Which animals do lions hunt?", "Which documents are needed?": the verb may
            # follow a noun.
            passive = any(w in vocab.BE and _participle(x) for w, x in pairwise(asked[1:4]))
            if not vocab.AUXILIARIES.isdisjoint(asked[1:3]) or passive:
                marks["role"] = "done to"
            elif asked[1] not in vocab.BE:
                marks["role"] = "doer"
        return {kind: mark for kind, mark in marks.items() if mark}

    @cached_property
    def prepositions(self) -> frozenset[str]:
        """The prepositions of the asking part ("written by" / "written for")."""
        return frozenset(self.asked) & vocab.PREPOSITIONS


def unreadable(text: str) -> bool:
    """Whether `text` has letters or symbols the guard cannot read (Question.unread), so that
    it never matches another question."""
    return not text.isascii() and _unread(_normalised(text))


def _normalised(text: str) -> str:
    """One form of each character: compatibility forms, curly quotes and signs as words."""
    text = unicodedata.normalize("NFKC", _raised(text))
    text = text.translate({0x2018: "'", 0x2019: "'", 0x201C: '"', 0x201D: '"'})
    for sign, word in _SIGNS.items():
        text = text.replace(sign, word)
    return text


def _raised(text: str) -> str:
    """Superscripts as an exponent ("10²" -> "10^2", "2ⁿ" -> "2^n"), and a subscript that
    follows no letter ("10₂", base 2) as a sign the guard cannot read: NFKC writes both as
    plain digits, and "10²" would read as 102. A subscript after a letter stays plain
    ("CO₂" is CO2)."""
    if text.isascii():
        return text
    out: list[str] = []
    before = ""  # "super" or "sub" within a run of them, else ""
    for c in text:
        tag = unicodedata.decomposition(c).partition(" ")[0]
        if tag == "<super>":
            out.append(("" if before == "super" else "^") + unicodedata.normalize("NFKC", c))
        elif tag == "<sub>" and before != "sub" and not (out and out[-1][-1:].isalpha()):
            out.append("\ufffd")
        elif before == "super":
            out.append(" " + c)  # "x²y" is x^2 y
        else:
            out.append(c)
        before = tag.strip("<>") if tag in ("<super>", "<sub>") else ""
    return "".join(out)


def _unread(text: str) -> bool:
    return any(ord(c) > 127 and unicodedata.category(c)[0] in "LNS" for c in text)


def _has_to(words: tuple[str, ...]) -> bool:
    """ "have to", "has to", "had to": an obligation."""
    return any(w in ("have", "has", "had") and x == "to" for w, x in pairwise(words))


def _counted(words: set[str]) -> bool:
    """Whether any quantifier is among `words`."""
    return any(not quantifiers.isdisjoint(words) for quantifiers in vocab.QUANTIFIERS.values())


def _beside_be(words: tuple[str, ...]) -> set[str]:
    """The words just before and after a form of "be" ("are you", "I am")."""
    return {x for w, y in pairwise(words) if vocab.PERSON_BE & {w, y} for x in (w, y)}


def _one_of(words: set[str], marks: dict[str, frozenset[str]]) -> str:
    """The one mark whose words are among `words`, or "" for none or several."""
    found = [mark for mark, marked in marks.items() if not marked.isdisjoint(words)]
    return found[0] if len(found) == 1 else ""


def _asking_offset(text: str) -> int:
    """Where the asking part begins: the first sentence with a question mark, else 0; and
    the sentence before it too when that question says little itself ("I need a recipe for
    lasagna. Can you help?"). A period after an abbreviation ends no sentence."""
    breaks = [
        m for m in _SENTENCE_END.finditer(text) if not _ABBREVIATION.search(text[: m.start()])
    ]
    starts = [0, *(m.end() for m in breaks)]
    ends = [*starts[1:], len(text)]
    asking = [n for n, (s, e) in enumerate(zip(starts, ends, strict=True)) if "?" in text[s:e]]
    if not asking:
        return 0
    n = asking[0]
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
    """A past participle: "owned", "eaten", or an irregular one lemminflect knows ("bought")."""
    if len(word) > 3 and word.endswith(("ed", "en")):
        return True
    verbs = getAllLemmas(word).get("VERB", ())
    return bool(verbs) and word not in verbs and not word.endswith(("ing", "s"))


def _passive(words: tuple[str, ...]) -> bool:
    """A form of "be" with a participle soon after it ("Is Facebook owned by...")."""
    return any(
        w in vocab.BE and any(_participle(x) for x in words[i + 1 : i + 5])
        for i, w in enumerate(words)
    )


Feature = Callable[[Question, tuple[str, ...]], Counter[str]]
"""Something a question mentions, counted: its numbers, units, named entities..."""


def numbers(_: Question, words: tuple[str, ...]) -> Counter[str]:
    """Numbers and ordinals as digits ("fifth" -> "5"), as often as they occur; after a
    minus sign that follows no number, negative ("-5", not "10 - 5")."""
    found: Counter[str] = Counter()
    for before, minus, word in zip(("", "", *words), ("", *words), words, strict=False):
        if match := _NUMBER.fullmatch(word):
            negative = minus == "-" and not _NUMBER.fullmatch(before)
            found[("-" if negative else "") + match.group(1)] += 1
        elif word in vocab.ORDINALS:
            found[vocab.ORDINALS[word]] += 1
    return found


def negated(q: Question, words: tuple[str, ...]) -> Counter[str]:
    """What each negation applies to: the next content word ("not null" -> "null")."""
    return _once(
        next((x for x in words[i + 1 :] if x in q.content), "")
        for i, w in enumerate(words)
        if w in vocab.NEGATIONS
    )


def units(_: Question, words: tuple[str, ...]) -> Counter[str]:
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


def times(_: Question, words: tuple[str, ...]) -> Counter[str]:
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


def entities(q: Question, words: tuple[str, ...]) -> Counter[str]:
    """Named entities; the other side may write them in lower case (`every_word`), but no typo or
    letter is forgiven in a name ("Ireland" / "Iceland", "HTTP" / "HTTPS")."""
    return _once(w for w in words if w in q.entities)


def every_word(_: Question, words: tuple[str, ...]) -> Counter[str]:
    return _once(words)


def _once(items: Iterable[str]) -> Counter[str]:
    """Each item counted once, whatever its repeats; no empty item."""
    return Counter(set(items) - {""})

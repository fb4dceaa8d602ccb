"""The semantic cache's lexical guard: close wordings whose answers differ must not hit.

Embedding similarity alone cannot tell "5 miles to km" from "5 km to miles" (0.993);
this check compares the content words, in order (docs/semantic-cache.md).
"""

from __future__ import annotations

import re
import unicodedata

# Function words, generic question words and politeness: words whose presence or absence
# does not change what is asked. Words that do ("from", "than", "before", "who", "which",
# "more", ordinals, negations) are deliberately not here.
_STOPWORDS_TEXT = """
    a an the is are was were be been being am do does did have has had i me my you your u ur
    we us our it its this that these those there here what whats wat how hows can could
    would should will shall may might must please pls plz tell explain know like want id im
    ive youre thats to of in on at for with by and or as some any many much quick question
    hey hi hello thanks thank thx so just really
"""
_NEGATIONS_TEXT = """
    not no never none nothing nor neither without cannot cant dont doesnt didnt isnt arent
    wasnt werent wont wouldnt shouldnt couldnt
"""
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
_NEGATIONS = frozenset(_NEGATIONS_TEXT.split())
_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?|[+\-*/%=<>!&|^~]+")
_TYPO_MIN_CHARS = 6


def same_question(query: str, cached: str) -> bool:
    """Whether an answer to `cached` may answer `query`: the same content words in the same
    order, up to function words, politeness, case, punctuation and one-letter typos."""
    a, b = _content_words(query), _content_words(cached)
    return len(a) == len(b) and all(x == y or _typo(x, y) for x, y in zip(a, b, strict=True))


def _content_words(text: str) -> list[str]:
    """Lower-case words and operators minus stopwords; every negation becomes "not"."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'").replace("'", "")
    text = re.sub(r"(?<=[a-z0-9])-(?=[a-z0-9])", " ", text)  # "32-bit" -> "32 bit"
    text = re.sub(r"!+(?=\s|$)", " ", text)  # an exclamation mark, not the "!" operator
    words = []
    for word in _TOKEN.findall(text):
        if word in _NEGATIONS:
            words.append("not")
        elif word not in _STOPWORDS:
            words.append(word)
    return words


def _typo(a: str, b: str) -> bool:
    """One inserted, deleted, replaced or swapped letter in a long word that keeps its first
    letter ("capitol", "spiders"); never in words with digits ("python2", "ipv4")."""
    if min(len(a), len(b)) < _TYPO_MIN_CHARS or a[0] != b[0] or abs(len(a) - len(b)) > 1:
        return False
    if any(c.isdigit() for c in a + b):
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

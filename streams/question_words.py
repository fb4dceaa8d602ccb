"""The word lists the semantic cache's guard reads questions with (streams/semantic_guard.py).

All lower case, apostrophes dropped ("dont"), as the guard reads words.
"""

from __future__ import annotations


def _vocabulary(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOPWORDS = _vocabulary("""
    a an the is are was were be been being am do does did have has had i me my you your u ur
    we us our it its this that these those there here what whats wat how hows can could
    would should will shall may might must please pls plz tell explain im ive youre thats to
    of in on at for with by and or as some any many much question hey hi hello thanks thank
    thx so just really
""")
"""Function words, generic question words and politeness: words whose presence or absence
does not change what is asked. Words that do ("from", "than", "before", "who", "which",
"more", ordinals, negations) are deliberately not here."""

GENERIC = _vocabulary("""
    which best way ways get got need people make use good give basic describe define
    definition meaning mean state process if whether okay one know want
""")
"""Content words that name nothing asked about ("the best way to", "give me", "which one");
one may go without a counterpart, but two that differ ("get" / "give") do not pass."""

NEGATIONS = _vocabulary("""
    not no never none nothing nor neither without cannot cant dont doesnt didnt isnt arent
    wasnt werent wont wouldnt shouldnt couldnt havent hasnt hadnt mustnt
""")

_CARDINALS = """
    zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
    fifteen sixteen seventeen eighteen nineteen twenty
"""
SPELLED_NUMBERS = {
    word: str(value) for value, word in enumerate(_CARDINALS.split())
} | {
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70",
    "eighty": "80", "ninety": "90", "hundred": "100", "thousand": "1000", "million": "1000000",
    "billion": "1000000000",
}  # fmt: skip
"""Number words that join into one number when they follow each other ("twenty one")."""
NUMBER_WORDS = {
    word: str(value) for value, word in enumerate(_CARDINALS.split()) if word != "one"
} | {
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70",
    "eighty": "80", "ninety": "90", "hundred": "100", "thousand": "1000", "million": "1000000",
    "billion": "1000000000", "dozen": "12", "twice": "2x", "double": "2x", "triple": "3x",
}  # fmt: skip
"""Number words as digits; "one" is too often a pronoun ("which one") to be a number."""
_ORDINAL_WORDS = "first second third fourth fifth sixth seventh eighth ninth tenth eleventh"
ORDINALS = {word: str(value) for value, word in enumerate(_ORDINAL_WORDS.split(), start=1)}

TIMES = _vocabulary("""
    january february april june july august september october november december jan feb apr
    jun jul aug sep sept oct nov dec monday tuesday wednesday thursday friday saturday sunday
    weekday weekdays weekend weekends today tomorrow yesterday tonight morning afternoon
    evening night nightly noon midnight hourly weekly monthly yearly annually spring summer
    autumn winter
""")
"""Months, days, seasons and times of day."""
AMBIGUOUS_TIMES = _vocabulary("march may am pm fall")
"""Times only after a number or "in", "on", "this", "next"... ("in May", "3 pm"); else
words ("May I...", "I am", "why do prices fall")."""
TIME_INTRODUCERS = _vocabulary("in on this next last every each by until since of early late")
DAILY = {"daily": "day", "everyday": "day"}

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
UNITS = {word: group.split()[0] for group in _UNIT_GROUPS.split("|") for word in group.split()}
"""Units by their canonical name (the first of each group)."""
AMBIGUOUS_UNITS = _vocabulary("m g l c f k s min")
"""Short forms that are units only after a number ("5 m", not "m")."""
UNIT_INTRODUCERS = _vocabulary("in into to per a an many much of from")
"""A unit word names the unit of the answer after these ("in feet", "how many miles");
alone ("What year...?") it is part of the question."""

FOCUS = {
    ("who",): "person", ("whom",): "person", ("whose",): "possessor", ("when",): "time",
    ("where",): "place", ("why",): "reason", ("how", "many"): "amount",
    ("how", "much"): "amount", ("how", "long"): "duration",
    ("how", "many", "minutes"): "duration", ("how", "many", "hours"): "duration",
    ("how", "many", "days"): "duration", ("how", "many", "weeks"): "duration",
    ("how", "many", "years"): "duration", ("how", "old"): "age", ("how", "far"): "distance",
    ("how", "often"): "frequency", ("what", "time"): "clock", ("what", "year"): "year",
    ("which", "year"): "year", ("what", "day"): "day", ("what", "causes"): "reason",
}  # fmt: skip
"""What kind of answer a question asks for, by its question words. "When" matches any
time; "what year", "what day" and "what time" only themselves."""
ANY_TIME = frozenset({"time", "year", "day", "clock"})
COMPARING = _vocabulary("difference differences differ differs different between vs versus compare")

SYMMETRIC = _vocabulary("difference differences differ differs different vs versus compare")
"""A comparison with one of these says the same with its sides swapped."""
DIRECTIONAL = _vocabulary("to from into onto than vs versus over under before after by for of")
"""After these, the next content word says who or what plays which part ("from A to B")."""
PARTICLES = _vocabulary("to from than into onto against toward towards off out up down")
"""Words of direction that may not appear on one side only ("flights to / from Paris",
"turn on / off": "to" and "on" are stopwords, "from" and "off" are not)."""
PRONOUNS = _vocabulary("me you him her us them myself yourself himself herself")

QUESTION_WORDS = _vocabulary("who whom what which")
OPEN_QUESTION_WORDS = _vocabulary("what which whats")
"""Question words whose noun, not themselves, says what kind of answer is asked for."""
AUXILIARIES = _vocabulary("did does do will would can could should")
"""After a question word, they make it ask for the one done to ("Who did X succeed?", "What
do sharks eat?"), not the doer ("Who succeeded X?", "What eats sharks?")."""
TENSES = {
    "past": _vocabulary("was were did had"),
    "present": _vocabulary("is are am do does has have"),
    "future": _vocabulary("will shall"),
}
MOODS = {
    "obligation": _vocabulary("should must ought"),
    "ability": _vocabulary("can could may might"),
    "condition": _vocabulary("would"),
}
LEADING_AUXILIARIES = {
    **{w: "past" for w in ["did", "was", "were", "had"]},
    **{w: "present" for w in ["do", "does", "is", "are", "am", "has", "have"]},
    **{w: "future" for w in ["will", "shall"]},
    **{w: "ability" for w in ["can", "could", "may", "might"]},
    **{w: "obligation" for w in ["should", "must"]},
    "would": "condition",
}
"""A question that starts with one of these asks yes or no, in its tense or mood."""
REQUESTS = _vocabulary("tell explain give show help describe list write suggest recommend")
"""After "Can you", "Could you", "Would you": a request, not a yes-or-no question."""
PREPOSITIONS = _vocabulary("to by for with as from on in at")
"""Prepositions that say who does what for whom; one may not take another's place."""
INTENSIFIERS = _vocabulary("so too this that")
BE = _vocabulary("is are am was were be been being get gets got")
QUANTIFIERS = {
    "all": _vocabulary("all every each"),
    "some": _vocabulary("some any"),
    "many": _vocabulary("many much most"),
    "few": _vocabulary("few little least"),
}
"""How much of something is asked about: "Are any mushrooms poisonous?" is not "Are many"."""
POSSESSIVES = {"mine": _vocabulary("my mine our ours"), "yours": _vocabulary("your yours")}
DETERMINERS = {
    "mine": _vocabulary("my our"),
    "yours": _vocabulary("your"),
    "any": _vocabulary("a an"),
}
"""Whose the noun after them is: "my IP address" is not "an IP address"."""
PERSONS = {"first": _vocabulary("i we"), "second": _vocabulary("you u")}
PERSON_BE = _vocabulary("am is are was were")
"""Beside a pronoun these say who a question is about ("Who are you?" / "Who am I?")."""
THIRD_PERSON = _vocabulary("he him his she her they them their theirs")

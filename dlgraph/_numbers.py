"""Numbers read from text, as a person writes them in an answer: digits ("12", "-3.5",
"1,234", "12km", "$40", "75%") or English words ("twelve", "twenty-one", "one hundred and
five", "two thousand"). Units and currency signs around a number are ignored.

A leaf: it imports nothing from dlgraph. The work is linear in the text's length.
"""

from __future__ import annotations

import re

_UNITS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {
    word: 10 * value
    for value, word in enumerate(
        "twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2
    )
}
_SCALES = {"thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}

_TOKEN = re.compile(
    r"(?P<digits>(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.,])\.\d+)"
    r"|(?P<word>[A-Za-z]+)"
)
"""A number in digits (thousands grouped by commas only in threes, so "1,2,3" is three
numbers; a sign only where no word or number precedes it, so "5-3" is 5 and 3), or a word."""


def numbers_in(text: str) -> list[float]:
    """Every number in `text`, in order; consecutive number words make one number
    ("twenty-one" is 21, "one hundred and five" is 105)."""
    found: list[float] = []
    words: list[str] = []
    for match in _TOKEN.finditer(text):
        word = (match.group("word") or "").lower()
        if words and _joins(word, words[-1]):
            words.append(word)
            continue
        if words:
            found.append(_from_words(words))
            words = []
        if word in _UNITS or word in _TENS:
            words.append(word)
        elif match.group("digits") is not None:
            found.append(float(match.group("digits").replace(",", "")))
    if words:
        found.append(_from_words(words))
    return found


def last_number(text: str) -> float | None:
    """The last number in `text` (a worked answer ends with its result), or None."""
    found = numbers_in(text)
    return found[-1] if found else None


def _joins(word: str, last: str) -> bool:
    """Whether `word` continues a number in words whose last word is `last` ("twenty" then
    "one", "hundred" then "and"); "one two" are two numbers, and "and" only joins a scale
    to what follows it."""
    if word in _UNITS:
        return (last in _TENS and 0 < _UNITS[word] < 10) or last in ("and", "hundred", *_SCALES)
    if word in _TENS:
        return last in ("and", "hundred", *_SCALES)
    if word == "hundred" or word in _SCALES:
        return last in _UNITS or last in _TENS or (word in _SCALES and last == "hundred")
    return word == "and" and (last == "hundred" or last in _SCALES)


def _from_words(words: list[str]) -> float:
    """The value of a run of number words."""
    total = current = 0
    for word in words:  # a trailing "and" adds nothing
        if word in _UNITS:
            current += _UNITS[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word in _SCALES:
            total += max(current, 1) * _SCALES[word]
            current = 0
    return float(total + current)

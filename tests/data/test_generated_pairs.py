"""Generated dates and numbers: seeded, correct against babel and num2words, varied lengths."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from babel.dates import format_date
from num2words import num2words

from attnlab.data.generated_pairs import build_generated_pairs

_SMALL = {
    word: value
    for value, word in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
        ]
    )
}
_TENS = {
    word: 10 * i
    for i, word in enumerate(["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"], 2)
}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9}


def english_words_to_int(text: str) -> int:
    """An independent reader of num2words' English, to check the pairs from the other side."""
    total, group = 0, 0
    for word in re.split(r"[\s,-]+", text):
        if word in _SMALL or word in _TENS:
            group += _SMALL.get(word, 0) + _TENS.get(word, 0)
        elif word == "hundred":
            group *= 100
        elif word in _SCALES:
            total, group = total + group * _SCALES[word], 0
        elif word not in ("and", ""):
            raise ValueError(f"unexpected word {word!r} in {text!r}")
    return total + group


_DATE_FORMATS = {"full": "%A, %B %d, %Y", "long": "%B %d, %Y", "medium": "%b %d, %Y"}


def _expected_target(source: str, target: str) -> str:
    for style, pattern in _DATE_FORMATS.items():
        try:
            day = dt.datetime.strptime(source, pattern).date()
        except ValueError:
            continue
        return format_date(day, style, locale="ja")
    if re.fullmatch(r"[\d,]+", source):
        return num2words(int(source.replace(",", "")), lang="ja")
    return num2words(english_words_to_int(source), lang="ja")


def test_english_reader_agrees_with_num2words() -> None:
    for number in (0, 7, 15, 312, 100_001, 987_654_321_012):
        assert english_words_to_int(num2words(number, lang="en")) == number


def test_same_seed_same_pairs_other_seed_other_pairs() -> None:
    first = build_generated_pairs(300, seed=3)
    assert first == build_generated_pairs(300, seed=3)
    assert first != build_generated_pairs(300, seed=4)
    assert len({source for source, _ in first}) == 300


def test_pairs_match_babel_and_num2words() -> None:
    pairs = build_generated_pairs(400, seed=11)
    for source, target in pairs:
        assert target == _expected_target(source, target), source
    targets = "".join(target for _, target in pairs)
    sources = "".join(source for source, _ in pairs)
    assert "年" in targets and "曜日" in targets and "/" in targets and "百" in targets
    assert "," in sources and re.search(r"\d", sources) and "hundred" in sources


def test_known_examples() -> None:
    assert num2words(312, lang="ja") == "三百十二"
    assert format_date(dt.date(2024, 3, 15), "long", locale="ja") == "2024年3月15日"


def test_source_lengths_vary() -> None:
    words = sorted(len(source.split()) for source, _ in build_generated_pairs(2000, seed=0))
    assert words[0] <= 2 and words[-1] >= 15


def test_other_language_and_unknown_language() -> None:
    german = build_generated_pairs(50, seed=1, lang="de")
    assert len(german) == 50
    weekdays = ("Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag")
    assert any(target.startswith(weekdays) for _, target in german)
    with pytest.raises(ValueError, match="'xx'"):
        build_generated_pairs(5, lang="xx")

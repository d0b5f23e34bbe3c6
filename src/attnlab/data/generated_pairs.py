"""A built-in translation task that needs only pip packages: dates and numbers, any size, seeded.

Each pair is English on the source side and ``lang`` on the target side, produced by ``babel``
(dates per locale: "Friday, March 15, 2024" -> "2024年3月15日金曜日" reorders and rewrites words)
and ``num2words`` (numbers in words: "three hundred and twelve" -> "三百十二"). Kinds:

- ``date_medium``, ``date_long``, ``date_full``: one date in babel's format of that name;
- ``number_words``: a number in English words -> the same number in ``lang`` words;
- ``number_digits``: a number in English digits ("1,234") -> the same number in ``lang`` words.

Every source has exactly one target, so the task is a function: a medium date that reads like the
long one ("May 12, 1945") is redrawn, and the two number kinds differ on the source side.

Numbers are drawn log-uniformly up to 10^12, so sources range from "seven" to sentences of
twenty-odd words: enough spread to report accuracy by source-length bucket.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable

from babel import Locale, UnknownLocaleError
from babel.dates import format_date
from babel.numbers import format_decimal
from num2words import num2words

__all__ = ["GENERATED_KINDS", "build_generated_pairs", "generate_pair"]

_FIRST_DAY = dt.date(1900, 1, 1).toordinal()
_LAST_DAY = dt.date(2099, 12, 31).toordinal()
_MAX_DIGITS = 12


def _random_date(rng: random.Random) -> dt.date:
    return dt.date.fromordinal(rng.randint(_FIRST_DAY, _LAST_DAY))


def _random_number(rng: random.Random) -> int:
    digits = rng.randint(1, _MAX_DIGITS)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _date_pair(style: str) -> Callable[[random.Random, str], tuple[str, str]]:
    def make(rng: random.Random, lang: str) -> tuple[str, str]:
        day = _random_date(rng)
        # In May the English medium and long forms coincide while their targets differ: redraw.
        while style == "medium" and format_date(day, "medium", locale="en") == format_date(day, "long", locale="en"):
            day = _random_date(rng)
        return format_date(day, style, locale="en"), format_date(day, style, locale=lang)

    return make


def _number_words(rng: random.Random, lang: str) -> tuple[str, str]:
    number = _random_number(rng)
    return num2words(number, lang="en"), num2words(number, lang=lang)


def _number_digits(rng: random.Random, lang: str) -> tuple[str, str]:
    number = _random_number(rng)
    return format_decimal(number, locale="en"), num2words(number, lang=lang)


GENERATED_KINDS: dict[str, Callable[[random.Random, str], tuple[str, str]]] = {
    "date_medium": _date_pair("medium"),
    "date_long": _date_pair("long"),
    "date_full": _date_pair("full"),
    "number_words": _number_words,
    "number_digits": _number_digits,
}


def _check_lang(lang: str) -> None:
    try:
        Locale.parse(lang)
        num2words(1, lang=lang)
    except (UnknownLocaleError, ValueError, NotImplementedError) as error:
        raise ValueError(f"lang {lang!r} must be a locale known to both babel and num2words: {error}") from error


def generate_pair(rng: random.Random, kind: str, lang: str = "ja") -> tuple[str, str]:
    """One ``(english, lang)`` pair of ``kind`` (a key of :data:`GENERATED_KINDS`), drawn from ``rng``."""
    if kind not in GENERATED_KINDS:
        raise ValueError(f"kind {kind!r} is not one of {sorted(GENERATED_KINDS)}")
    return GENERATED_KINDS[kind](rng, lang)


def build_generated_pairs(size: int, seed: int = 0, lang: str = "ja") -> list[tuple[str, str]]:
    """``size`` date and number pairs with distinct sources, the same for the same seed.

    Args:
        size: how many pairs; kinds are drawn uniformly.
        seed: seeds a private ``random.Random``; global random state is untouched.
        lang: target language, a locale known to babel and num2words (``ja``, ``de``, ``fr``...).

    Returns:
        Pairs in generation order.

    Raises:
        ValueError: ``size`` is negative, ``lang`` is unsupported, or ``size`` unique pairs
            could not be drawn (far more than the ~200k distinct dates and 10^12 numbers allow).
    """
    if size < 0:
        raise ValueError(f"size ({size}) must be >= 0")
    _check_lang(lang)
    rng = random.Random(seed)
    kinds = list(GENERATED_KINDS)
    targets: dict[str, str] = {}  # keyed by source: a repeated source adds nothing
    for _ in range(20 * size + 100):
        if len(targets) == size:
            break
        source, target = generate_pair(rng, rng.choice(kinds), lang)
        targets.setdefault(source, target)
    if len(targets) < size:
        raise ValueError(f"could only draw {len(targets)} unique pairs of the {size} requested")
    return list(targets.items())

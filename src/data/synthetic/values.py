"""Parsers of the generators' text values: --sizes, --size, --slices and case-day ids like `case7_day0`."""
from __future__ import annotations

from src.core.errors import DataError
from src.data.layout import CASE_DAY_RE


def parse_case_day(text: str) -> tuple[int, int]:
    """`case7_day0` -> (7, 0); DataError otherwise."""
    m = CASE_DAY_RE.match(text.strip())
    if not m:
        raise DataError(f"bad case-day {text!r}: expected case{{N}}_day{{D}}, e.g. case7_day0")
    return int(m.group(1)), int(m.group(2))


def _size(item: str, flag: str, text: str) -> tuple[int, int]:
    try:
        width, height = (int(x) for x in item.lower().split("x"))
    except ValueError:
        raise DataError(f"{flag} {text!r}: expected WxH like 96x96 (width first)") from None
    return width, height


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """`96x96,112x96` -> [(96, 96), (112, 96)] (width first), as --sizes gives them."""
    return [_size(item, "--sizes", text) for item in text.split(",") if item.strip()]


def parse_size(text: str) -> tuple[int, int]:
    """`240x160` -> (240, 160) (width first), as --size gives it."""
    return _size(text, "--size", text)


def parse_slices(text: str) -> list[int]:
    """`144,80` -> [144, 80], as --slices gives them."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DataError(f"--slices {text!r}: expected integers like 144,80") from None

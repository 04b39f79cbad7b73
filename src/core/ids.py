"""Case-day ids, as the competition spells them."""
from __future__ import annotations


def case_day_key(case_day: str) -> tuple[int, int]:
    """"case12_day3" -> (12, 3): sorts case-days by case, then day."""
    case, day = case_day.removeprefix("case").split("_day")
    return int(case), int(day)

"""Which case-days to render: case ids, scan days, image sizes and slice counts like the real data's."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from src.core.errors import DataError

REAL_SIZES = ((266, 266, 1.50), (360, 310, 1.50), (234, 234, 1.50), (276, 276, 1.63))  # W, H, spacing
REAL_SIZE_WEIGHTS = (0.5, 0.3, 0.1, 0.1)  # after each size has had one case
REAL_SLICES = (144, 80)  # the first is the majority
DEFAULT_SPACING = 1.50
MAX_CASE_ID = 150
MAX_DAY = 40
DAY_WEIGHTS = (0.15, 0.2, 0.3, 0.2, 0.15)  # probability of 1..5 days


@dataclass(frozen=True)
class CaseDaySpec:
    """One case-day to render."""

    split: str
    case: int
    day: int
    day_index: int  # 0: the case's reference day (anatomy and intensity scale as drawn); others are perturbed
    width: int
    height: int
    spacing: float
    slices: int
    tail: int = 0
    bad: bool = False

    @property
    def case_day(self) -> str:
        return f"case{self.case}_day{self.day}"


def _layouts(rng: np.random.Generator, n: int, sizes: list[tuple[int, int, float]],
             slices: list[int]) -> list[tuple[tuple[int, int, float], int]]:
    """Image size and slice count of `n` cases: every size and every minority slice count at least once."""
    weights = REAL_SIZE_WEIGHTS if tuple(sizes) == REAL_SIZES else None
    out: list = [None] * n
    for rank, i in enumerate(rng.permutation(n)):
        size = sizes[rank] if rank < len(sizes) else sizes[rng.choice(len(sizes), p=weights)]
        if rank < len(slices) - 1:
            count = slices[rank + 1]
        else:
            count = slices[0] if rng.random() < 0.85 else slices[rng.integers(len(slices))]
        out[i] = (size, count)
    return out


def _days(seed: int, case: int, forced: set[int]) -> tuple[list[int], int]:
    """Sorted scan days of a case (1-5 of them, from 0..40) plus one later day kept for the test split."""
    rng = np.random.default_rng([seed, case, 10])
    n = int(rng.choice(np.arange(1, 6), p=DAY_WEIGHTS))
    drawn = sorted(int(d) for d in rng.choice(MAX_DAY + 1, n + 1, replace=False))
    days = sorted(set(drawn[:-1]) | forced)
    return days, max(drawn[-1], days[-1] + 1)


def _case_ids(rng: np.random.Generator, cases: int, unseen: int, forced: list[int]) -> tuple[list[int], list[int]]:
    """Train and unseen test case ids from 1..150; the forced ids end up among the train cases."""
    if cases + unseen > MAX_CASE_ID:
        raise DataError(f"at most {MAX_CASE_ID} cases in all; asked for {cases} train + {unseen} unseen test")
    order = [int(c) for c in rng.permutation(np.arange(1, MAX_CASE_ID + 1))]
    train = order[:cases]
    missing = [c for c in forced if c not in train]
    free = [i for i in reversed(range(cases)) if train[i] not in forced]
    if len(missing) > len(free):
        raise DataError(f"--bad-case-day names {len(forced)} cases but only {cases} train cases are made")
    for i, c in zip(free, missing):
        train[i] = c
    test = [c for c in order[cases:] if c not in forced and c not in train][:unseen]
    return sorted(train), sorted(test)


def plan(cases: int, seed: int, test_cases: int, sizes: list[tuple[int, int, float]], slices: list[int],
         ambiguous_tail: int = 0, bad_case_days: tuple[tuple[int, int], ...] = ()) -> list[CaseDaySpec]:
    """The case-days to render, train first then test, each sorted by case and day.

    The test split holds `test_cases` cases: `test_cases // 2` train cases seen again on a later day,
    the rest unseen cases.
    """
    rng = np.random.default_rng([seed, 0])
    forced: dict[int, set[int]] = {}
    for case, day in bad_case_days:
        forced.setdefault(case, set()).add(day)
    seen = min(test_cases // 2, cases)
    train_ids, unseen_ids = _case_ids(rng, cases, test_cases - seen, sorted(forced))
    later_ids = set(int(c) for c in rng.choice(train_ids, seen, replace=False))
    bad = set(bad_case_days)
    specs_train, specs_test = [], []
    for ids, split in ((train_ids, "train"), (unseen_ids, "test")):
        for case, ((w, h, sp), count) in zip(ids, _layouts(rng, len(ids), sizes, slices)):
            days, later = _days(seed, case, forced.get(case, set()))
            target = specs_train if split == "train" else specs_test
            for i, day in enumerate(days):
                target.append(CaseDaySpec(split, case, day, i, w, h, sp, count,
                                          ambiguous_tail if split == "train" else 0, (case, day) in bad))
            if case in later_ids:
                specs_test.append(CaseDaySpec("test", case, later, len(days), w, h, sp, count))
    specs_test.sort(key=lambda s: (s.case, s.day))
    return specs_train + specs_test


def image_sizes(sizes) -> list[tuple[int, int, float]]:
    """(W, H) pairs -> (W, H, spacing): the real spacing for a real size, else 1.50 mm; (W, H, spacing) kept."""
    if sizes is None:
        return list(REAL_SIZES)
    known = {(w, h): sp for w, h, sp in REAL_SIZES}
    out = []
    for size in sizes:
        if len(size) not in (2, 3):
            raise DataError(f"image size {size!r}: expected (width, height) or (width, height, spacing)")
        w, h = int(size[0]), int(size[1])
        if min(w, h) < 32:
            raise DataError(f"image size {w}x{h} is too small (at least 32x32)")
        out.append((w, h, float(size[2]) if len(size) == 3 else known.get((w, h), DEFAULT_SPACING)))
    if not out:
        raise DataError("no image sizes given")
    return out

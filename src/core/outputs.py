"""Where a command may write, one rule for every writer: never over what the user has, never onto the
command's own inputs or into the data folder, and names that stay one folder deep."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from src.core.errors import DataError


def check_name(name: str, where: str) -> str:
    """`name` (a run, model or recipe name) as one path component: not empty, no separator, not
    starting with '.' (so neither '.' nor '..'); else a one-line error naming `where` it came from."""
    if not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise DataError(f"{where} {name!r}: must be a plain folder name "
                        "(not empty, no '/' or '\\', not starting with '.')")
    return name


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(path))


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(out: str | os.PathLike, flag: str = "--out", inputs: Iterable[str | os.PathLike | None] = (),
                 data_dir: str | os.PathLike | None = None, markers: tuple[str, ...] = (), what: str = "") -> None:
    """Refuse, with a one-line error naming `flag`, an output path `out` that is one of the command's
    `inputs` (or a folder holding one), or that lies inside the data folder `data_dir`.

    With `markers` (file names), `out` is a folder that replaces what is there: it may only be absent,
    empty, or this command's own earlier output (`what`), recognised by every one of `markers` in it."""
    real = _real(out)
    for given in inputs:
        if given is not None and _within(_real(given), real):
            raise DataError(f"{flag} {out}: would overwrite the input {given}; choose another path")
    if data_dir is not None and _within(real, _real(data_dir)):
        raise DataError(f"{flag} {out}: is inside the data folder {data_dir}; choose another path")
    if not markers:
        return
    path = Path(out)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise DataError(f"{flag} {out}: exists and is not a {what} folder; remove it or choose another path")
    if path.is_dir() and any(path.iterdir()) and not all((path / m).is_file() for m in markers):
        raise DataError(f"{flag} {out}: exists and is not a {what} (no {' and '.join(markers)} in it); "
                        "remove it or choose another path")


# the test truth each data generator writes beside its folder, `<out>_test_truth<ending>` (None: no test split)
TRUTH_ENDINGS = {"gi": ".csv", "carvana": ".csv", "ebhi": None, "nnunet": ""}


def synthetic_truth(format: str, out_dir: str | os.PathLike) -> Path | None:
    """Where the generator of `format` puts the test truth of `out_dir` by default (None: it writes none)."""
    return _truth_beside(Path(out_dir), TRUTH_ENDINGS[format])


def _truth_beside(out: Path, ending: str | None) -> Path | None:
    return None if ending is None else out.parent / f"{out.name}_test_truth{ending}"


def new_dataset_paths(out_dir: str | os.PathLike, truth_out: str | os.PathLike | None, truth_ending: str | None,
                      overwrite: bool) -> tuple[Path, Path | None]:
    """Where a data generator writes: the dataset folder `out_dir` and its test truth (`truth_out`, default
    `<out_dir>_test_truth<truth_ending>` beside it; None when `truth_ending` is None: no truth).

    The truth must lie outside the dataset; an existing non-empty `out_dir` is refused unless `overwrite`."""
    out = Path(out_dir).resolve()
    truth = None
    if truth_ending is not None:
        truth = Path(truth_out).resolve() if truth_out else _truth_beside(out, truth_ending)
        if truth.is_relative_to(out):
            raise DataError(f"{truth}: the test truth must lie outside the dataset folder {out}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DataError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
    return out, truth

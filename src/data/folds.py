"""Folds: assign every train case-day (GI layout) or image (2D datasets) to a cross-validation fold.

GI: sklearn's StratifiedGroupKFold runs over one row per slice, labelled organ-positive (any class has
a mask) or empty, with the case as group: no case is split across folds and the folds get similar
shares of positive slices. Reads train.csv and the slice file names only, never the pixels.

2D: the same splitter over one row per labelled image, grouped by the description's group key (the
car of a Carvana view; none: each image alone) and stratified by its stratum (the EBHI-Seg category).
Reads the file names, and what the format's description reads: the first image's header (Carvana) or
pixels (EBHI-Seg, for its channel count). Both kinds check sizes against the --max-image-pixels cap.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from src.core.errors import DataError
from src.data.formats import detect_format
from src.data.image_cache import entry_key
from src.data.layout import (
    MAX_IMAGE_PIXELS,
    check_labels_match_images,
    read_labels,
    scan_split,
)

FOLD_COLUMNS = ["case", "day", "case_day", "fold"]
SAMPLE_FOLD_COLUMNS = ["id", "group", "stratum", "fold"]


def slice_table(data_dir: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> pd.DataFrame:
    """One row per train slice in (case, day, slice) order: case, day, case_day, positive (bool)."""
    data_dir = Path(data_dir)
    csv_path = data_dir / "train.csv"
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: not found (folds are made from the train labels)")
    labels = read_labels(csv_path)
    index = scan_split(data_dir, "train", max_pixels)
    check_labels_match_images(labels, index, csv_path)
    if index.empty:
        raise DataError(f"{data_dir / 'train'}: no train slices to split into folds")
    positive = labels.assign(positive=labels["rle"].str.strip() != "").groupby("id")["positive"].any()
    return index[["case", "day", "case_day"]].assign(positive=index["id"].map(positive).to_numpy())


def assign_folds(slices: pd.DataFrame, n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """Folds for the per-slice table of `slice_table`: one row per case-day, sorted by case and day.

    Columns case, day, case_day, fold, n_slices, n_positive_slices. Deterministic for a seed.
    """
    fold = _split(n_folds, seed, slices["case"].nunique(), "cases (folds are grouped by case)",
                  slices["positive"].astype(int), slices["case"])
    return slices.assign(fold=fold).groupby(["case", "day", "case_day"], as_index=False, sort=True).agg(
        fold=("fold", "first"), n_slices=("positive", "size"), n_positive_slices=("positive", "sum"))


def _split(n_folds: int, seed: int, n_groups: int, what: str, y, groups) -> np.ndarray:
    """The fold of each row: StratifiedGroupKFold over labels `y` and `groups` (n_groups of them)."""
    if n_folds < 2:
        raise DataError(f"need at least 2 folds, got {n_folds}")
    if n_folds > n_groups:
        raise DataError(f"{n_folds} folds asked for but the data has only {n_groups} {what}")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold = np.empty(len(groups), dtype=np.int64)
    with warnings.catch_warnings():  # a stratum smaller than n_folds: the fold table shows the counts
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(groups)), y, groups=groups)):
            fold[held_out] = k
    return fold


def assign_sample_folds(samples: pd.DataFrame, n_folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """Folds for a 2D dataset's table (id, group, stratum), sorted by id; deterministic for a seed."""
    samples = samples.sort_values("id", kind="stable").reset_index(drop=True)
    y = pd.factorize(samples["stratum"], sort=True)[0]
    fold = _split(n_folds, seed, samples["group"].nunique(), "groups", y, samples["group"].to_numpy())
    return samples.assign(fold=fold)[SAMPLE_FOLD_COLUMNS]


def make_folds(data_dir: str | Path, n_folds: int = 5, seed: int = 42, exclude: Iterable[str] = (),
               format: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> pd.DataFrame:
    """Folds of the train case-days (GI) or labelled images (2D) of `data_dir`, leaving out those in `exclude`;
    an image read (a slice's name, a 2D description's first image) of more than `max_pixels` pixels is a DataError."""
    fmt = detect_format(data_dir, format, max_pixels)
    if fmt.describe(Path(data_dir)).dims == "2d":
        return _make_sample_folds(fmt, Path(data_dir), n_folds, seed, set(exclude))
    slices = slice_table(data_dir, max_pixels)
    exclude = set(exclude)
    unknown = sorted(exclude - set(slices["case_day"]))
    if unknown:
        raise DataError(f"{Path(data_dir) / 'train'}: excluded case-day {unknown[0]} is not in the data")
    return assign_folds(slices[~slices["case_day"].isin(exclude)].reset_index(drop=True), n_folds, seed)


def _make_sample_folds(fmt, data_dir: Path, n_folds: int, seed: int, exclude: set[str]) -> pd.DataFrame:
    listed = fmt.samples(data_dir, "train")
    table = pd.DataFrame([(s.id, s.group or s.id, s.stratum) for s in listed.samples], columns=["id", "group", "stratum"])
    if table.empty:
        raise DataError(f"{data_dir}: no labelled images to split into folds")
    unknown = sorted(exclude - set(table["id"]))
    if unknown:
        raise DataError(f"{data_dir}: excluded image {unknown[0]} is not in the data")
    return assign_sample_folds(table[~table["id"].isin(exclude)], n_folds, seed)


FOLD_KINDS = {"case-days": "case_day", "images": "id"}  # what a folds file splits, by its key column


def load_folds(path: str | Path) -> pd.DataFrame:
    """Read a folds file written by this stage; DataError unless every case-day has one fold and no case spans two."""
    path = Path(path)
    folds = _read_folds(path, FOLD_COLUMNS, "case-days")
    for col in ("case", "day", "fold"):
        if not pd.api.types.is_integer_dtype(folds[col]) or (folds[col] < 0).any():
            raise DataError(f"{path}: column {col} must hold non-negative integers")
    _check_rows(folds, path)
    return folds


def load_sample_folds(path: str | Path) -> pd.DataFrame:
    """Read the folds file of a 2D dataset (id, group, stratum, fold); DataError unless every id has one
    fold, folds are non-negative integers and no group spans two."""
    path = Path(path)
    folds = _read_folds(path, SAMPLE_FOLD_COLUMNS, "images", keep_default_na=False,
                        dtype={"id": str, "group": str, "stratum": str})
    if not pd.api.types.is_integer_dtype(folds["fold"]) or (folds["fold"] < 0).any():
        raise DataError(f"{path}: column fold must hold non-negative integers")
    dup = np.flatnonzero(folds["id"].duplicated().to_numpy())
    if dup.size:
        raise DataError(f"{path} row {dup[0] + 2}: image {folds['id'].iloc[dup[0]]} listed twice")
    spread = folds.groupby("group")["fold"].nunique()
    if (spread > 1).any():
        raise DataError(f"{path}: group {spread.index[spread > 1][0]} is in more than one fold (folds must be grouped)")
    return folds


def entry_folds(path: str | Path) -> dict[str, int]:
    """The fold of each 2D cache entry (its key, src.data.image_cache.entry_key) from a 2D folds file."""
    folds = load_sample_folds(path)
    return {entry_key(i): int(f) for i, f in zip(folds["id"], folds["fold"])}


def _read_folds(path: Path, columns: list[str], kind: str, **read_options) -> pd.DataFrame:
    """A folds CSV of `kind` (a key of FOLD_KINDS) with `columns`, not empty; one-line errors naming the file,
    a folds file of the other kind included."""
    if not path.is_file():
        raise DataError(f"{path}: folds file not found (run python -m src.make_folds)")
    try:
        folds = pd.read_csv(path, **read_options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read CSV ({str(exc).splitlines()[0]})") from None
    if FOLD_KINDS[kind] not in folds.columns:
        for other, key in FOLD_KINDS.items():
            if key in folds.columns:
                raise DataError(f"{path}: folds of {other}, but the data has {kind} (make its folds with "
                                "python -m src.make_folds --data-dir DATA)")
    missing = [c for c in columns if c not in folds.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; has {list(folds.columns)}")
    if folds.empty:
        raise DataError(f"{path}: no {kind} listed")
    return folds


def _check_rows(folds: pd.DataFrame, path: Path) -> None:
    expected = "case" + folds["case"].astype(str) + "_day" + folds["day"].astype(str)
    bad = np.flatnonzero((folds["case_day"] != expected).to_numpy())
    if bad.size:
        raise DataError(f"{path} row {bad[0] + 2}: case_day {folds['case_day'].iloc[bad[0]]!r} does not match "
                        f"case {folds['case'].iloc[bad[0]]} day {folds['day'].iloc[bad[0]]}")
    dup = np.flatnonzero(folds["case_day"].duplicated().to_numpy())
    if dup.size:
        raise DataError(f"{path} row {dup[0] + 2}: case-day {folds['case_day'].iloc[dup[0]]} listed twice")
    spread = folds.groupby("case")["fold"].nunique()
    if (spread > 1).any():
        raise DataError(f"{path}: case {spread.index[spread > 1][0]} is in more than one fold (folds must be grouped by case)")


def fold_table(folds: pd.DataFrame) -> pd.DataFrame:
    """Per fold: cases, case-days, slices and share of organ-positive slices (GI); groups, images and
    images per stratum (2D)."""
    if "id" in folds.columns:
        table = folds.groupby("fold").agg(groups=("group", "nunique"), images=("id", "size"))
        if folds["stratum"].astype(bool).any():
            table = table.join(pd.crosstab(folds["fold"], folds["stratum"]))
        return table.reset_index()
    table = folds.groupby("fold").agg(cases=("case", "nunique"), case_days=("case_day", "size"),
                                      slices=("n_slices", "sum"), positive=("n_positive_slices", "sum"))
    table["positive_share"] = (table.pop("positive") / table["slices"]).round(3)
    return table.reset_index()

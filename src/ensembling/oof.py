"""Where the tuner's out-of-fold case-days live, and how one is read: `case_sources` lists every
case-day with an OOF prediction in all runs (and the gate and crop runs), `CaseSource.load` reads
one into an exact or a proxy OOFCase, one case-day at a time (the models' files memory-mapped), as an exact case and a proxy at once."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from src.core.errors import DataError
from src.data.layout import load_prediction, prediction_shape
from src.data.volumes import VolumeCache
from src.ensembling.search import OOFCase, make_case, region_of_interest
from src.inference.runs import TrainedRun


@dataclass(frozen=True)
class CaseSource:
    """One OOF case-day's files: each model's probabilities, the truth's cache, the gate and the box."""

    case_day: str
    fold: int
    shape: tuple[int, ...]  # (Z, 3, H, W), from the first model's file header
    files: dict[str, Path]  # model name -> OOF .npy
    cache_dir: Path
    gate: Path | None = None  # classifier presence (.npy)
    box: Path | None = None  # detector box (.json)

    @property
    def has_gate(self) -> bool:
        return self.gate is not None

    @property
    def has_box(self) -> bool:
        return self.box is not None

    def load(self, *strides: int) -> list[OOFCase]:
        """The case-day, read once, cut to its region of interest at each of `strides`: exact (0) or
        a proxy (make_case)."""
        truth = np.asarray(VolumeCache(self.cache_dir).load(self.case_day).mask) > 0
        probs = {name: check_probs(load_prediction(path, mmap=True), truth.shape, path)
                 for name, path in self.files.items()}
        gate = None if self.gate is None else check_probs(load_prediction(self.gate), truth.shape[:2], self.gate)
        box = None if self.box is None else load_prediction(self.box)["box"]
        roi = region_of_interest(probs.values(), truth)
        return [make_case(self.case_day, self.fold, probs, truth, gate, box, stride, roi) for stride in strides]


def check_probs(array: np.ndarray, shape: tuple, source: Path) -> np.ndarray:
    """`array` (values checked by load_prediction) if it has `shape`, else a DataError naming `source`."""
    if array.shape != shape:
        hint = " (a classifier? pass it with --gate)" if array.ndim in (1, 2) and array.ndim < len(shape) else ""
        raise DataError(f"{source}: probabilities of shape {array.shape}, expected {shape}{hint}")
    return array


def shared_folds(runs: list[TrainedRun], also: list[TrainedRun] = ()) -> dict[str, int]:
    """case-day (or 2D image) -> fold, identical in every run and in the runs `also` (a gate) (else the OOF
    predictions are not out-of-fold together); the runs' names must be distinct (they key the ensemble's
    weights)."""
    if len({r.name for r in runs}) != len(runs):
        raise DataError(f"run names must be distinct: {[r.name for r in runs]}")
    first = runs[0].case_day_folds()
    for run in [*runs[1:], *also]:
        other = run.case_day_folds()
        clash = sorted(cd for cd in set(first) & set(other) if first[cd] != other[cd])
        if clash:
            raise DataError(f"{run.path}: {clash[0]} is in fold {other[clash[0]]} but in fold {first[clash[0]]} "
                            f"of {runs[0].path} (train every run on the same folds file)")
    return first


def case_sources(runs: list[TrainedRun], cache_dir: Path, gate: TrainedRun | None = None,
                 crop: TrainedRun | None = None, log: Callable[[str], None] = print) -> list[CaseSource]:
    """Every case-day with an OOF prediction in all runs (and gate/crop), in the cache's order."""
    folds = shared_folds(runs)
    files = {r.name: r.prediction_files("oof") for r in runs}
    extra = {k: v.prediction_files("oof") for k, v in (("gate", gate), ("crop", crop)) if v}
    common = set(folds).intersection(*map(set, files.values()), *map(set, extra.values()))
    ordered = [cd for cd in VolumeCache(cache_dir).case_days("train") if cd in common]
    if not ordered:
        raise DataError(f"no case-day has out-of-fold predictions in every run and in the cache {cache_dir}")
    skipped = len(set().union(*map(set, files.values()))) - len(ordered)
    left_out = f" ({skipped} without every prediction left out)" if skipped else ""
    log(f"ensemble: {len(ordered)} OOF case-days{left_out}")
    return [CaseSource(cd, folds[cd], prediction_shape(next(iter(files.values()))[cd]),
                       {name: Path(f[cd]) for name, f in files.items()}, Path(cache_dir),
                       Path(extra["gate"][cd]) if gate else None, Path(extra["crop"][cd]) if crop else None)
            for cd in ordered]

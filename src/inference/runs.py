"""A trained run as prediction sees it: its folds, which case-day each fold validated, and the
predictions it has saved (through the artifact layout of src.core.artifacts)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from src.core.artifacts import FoldDir, FoldRecord, Prediction, RunDir, load_prediction
from src.core.errors import DataError
from src.data.volumes import default_cache_dir


@dataclass(frozen=True)
class TrainedFold:
    """One trained fold: its folder and its saved config record."""

    dir: FoldDir
    record: FoldRecord

    @property
    def fold(self) -> str:
        return self.dir.fold

    @property
    def stage(self) -> str:
        return self.record.stage

    @property
    def val_case_days(self) -> tuple[str, ...]:
        return self.record.val_case_days


def check_complete(fold: FoldDir, allow_incomplete: bool = False) -> None:
    """A fold without its done marker (killed, or still training) is refused, unless allowed."""
    if fold.is_done():
        return
    if not allow_incomplete:
        raise DataError(f"{fold.path}: incomplete fold (no done marker: training was interrupted or is still "
                        "running); finish it with --resume, or pass --allow-incomplete to use it anyway")
    print(f"warning: {fold.path}: incomplete fold used (--allow-incomplete)", file=sys.stderr)


def run_folds(run_dir: str | Path, allow_incomplete: bool = False) -> dict[str, TrainedFold]:
    """The folds of a run that have weights, keyed "0", "1", ..., "all"; all of one stage, all
    complete (or `allow_incomplete`)."""
    folds = RunDir(run_dir).folds()
    for fold in folds.values():
        check_complete(fold, allow_incomplete)
    out = {k: TrainedFold(f, f.read_config()) for k, f in folds.items()}
    stages = {info.stage for info in out.values()}
    if len(stages) > 1:
        raise DataError(f"{run_dir}: folds of different stages {sorted(stages)}")
    return out


def run_stage(run_dir: str | Path) -> str:
    return next(iter(run_folds(run_dir).values())).stage


def select_folds(run_dir: str | Path, folds: str | list[str] | None, split: str,
                 allow_incomplete: bool = False) -> list[TrainedFold]:
    """Folds to predict with: the given list, "all" (the fold-all model), or by default every numbered fold."""
    available = run_folds(run_dir, allow_incomplete)
    if folds is None or folds == "":
        names = [f for f in available if f != "all"] or ["all"]
    else:
        names = folds.split(",") if isinstance(folds, str) else [str(f) for f in folds]
    missing = [f for f in names if f not in available]
    if missing:
        raise DataError(f"{run_dir}: no trained fold {missing[0]} (has {', '.join(available)})")
    if split == "oof" and "all" in names:
        raise DataError(f"{run_dir}: the fold-all model saw every case-day, it has no out-of-fold predictions")
    return [available[f] for f in names]


def case_day_folds(run_dir: str | Path, allow_incomplete: bool = False) -> dict[str, int]:
    """case-day -> the numbered fold that validated it."""
    return {cd: int(info.fold) for info in run_folds(run_dir, allow_incomplete).values() if info.fold != "all"
            for cd in info.val_case_days}


def prediction_files(run_dir: str | Path, split: str, allow_incomplete: bool = False) -> dict[str, Path]:
    """case-day -> prediction file: the run's `split` predictions when complete, else for oof the
    training-time out-of-fold files of its folds."""
    files = RunDir(run_dir).predictions(split).files()
    if files or split != "oof":
        return files
    out = {}
    for info in run_folds(run_dir, allow_incomplete).values():
        out.update(info.dir.oof_files())
    return out


def prediction_manifest(run_dir: str | Path, split: str) -> dict | None:
    return RunDir(run_dir).predictions(split).read_manifest()


def split_predictions(run_dir: str | Path, split: str, case_days: list[str],
                      allow_incomplete: bool = False) -> dict[str, Prediction]:
    """Saved predictions of a run (a classifier gate, a detector's boxes) for the given case-days."""
    files = prediction_files(run_dir, split, allow_incomplete)
    missing = [cd for cd in case_days if cd not in files]
    if missing:
        raise DataError(f"{run_dir}: no {split} prediction for {missing[0]} "
                        f"(run python -m src.predict --run {run_dir} --split {split})")
    return {cd: load_prediction(files[cd]) for cd in case_days}


def resolve_cache_dir(info: TrainedFold, data_dir: str | Path | None, cache_dir: str | Path | None) -> Path:
    """--cache-dir, else the cache of --data-dir, else the run's own."""
    if cache_dir:
        return Path(cache_dir)
    if data_dir:
        return default_cache_dir(data_dir)
    config = info.record.config
    return Path(config.get("cache_dir") or default_cache_dir(config.get("data_dir", "data")))

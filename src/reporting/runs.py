"""The runs a report shows: each fold's config, log and done marker, and the cache with their truth.

Kept apart from the rest of the report: src.inference.runs is to replace these two types.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from src.core.artifacts import FoldDir, RunDir
from src.core.errors import DataError
from src.data.volumes import VolumeCache, default_cache_dir
from src.inference.runs import check_complete


@dataclass(frozen=True)
class Fold:
    """One fold folder of a run: its config block, log and done.json (None while unfinished)."""

    name: str
    dir: FoldDir
    config: dict
    log: pd.DataFrame
    done: dict | None

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def threshold(self) -> float:
        return float(self.config.get("threshold", 0.5))

    def oof_files(self) -> list[tuple[str, Path]]:
        return [(cd, p) for cd, p in self.dir.oof_files().items() if p.suffix == ".npy"]

    def best_score(self) -> float:
        """done.json's best_score, else the best val_score of log.csv, else NaN."""
        best = (self.done or {}).get("best_score")
        if best is None and "val_score" in self.log and self.log["val_score"].notna().any():
            best = self.log["val_score"].max()
        best = float("nan") if best is None else float(best)
        return best if math.isfinite(best) else float("nan")


@dataclass(frozen=True)
class Run:
    name: str
    path: Path
    folds: tuple[Fold, ...]

    @property
    def stage(self) -> str:
        return str(self.folds[0].config.get("stage", ""))

    @property
    def arch(self) -> str:
        return str(self.folds[0].config.get("arch", ""))


def _load_fold(fold: FoldDir) -> Fold:
    try:
        log = fold.read_log()
    except (OSError, ValueError) as exc:
        raise DataError(f"{fold.log_path}: cannot read CSV ({exc})") from None
    return Fold(fold.fold, fold, fold.read_config().config, pd.DataFrame() if log is None else log, fold.read_done())


def load_run(path: str | Path, allow_incomplete: bool = False) -> Run:
    """A run folder runs/<name> with configured folds inside; unfinished ones only if allowed."""
    run = RunDir(path)
    folds = run.folds(require_weights=False)
    for fold in folds.values():
        check_complete(fold, allow_incomplete)
    return Run(run.name, run.path, tuple(_load_fold(f) for f in folds.values()))


def resolve_cache(run: Run, cache_dir: str | Path | None, data_dir: str | Path | None) -> VolumeCache:
    """--cache-dir, else the cache of --data-dir, else the run's config cache_dir, else its data_dir's."""
    config = run.folds[0].config
    if cache_dir:
        return VolumeCache(cache_dir)
    if data_dir:
        return VolumeCache(default_cache_dir(data_dir))
    if config.get("cache_dir"):
        return VolumeCache(config["cache_dir"])
    if config.get("data_dir"):
        return VolumeCache(default_cache_dir(config["data_dir"]))
    raise DataError(f"{run.folds[0].dir.config_path}: no data_dir or cache_dir; pass --cache-dir")

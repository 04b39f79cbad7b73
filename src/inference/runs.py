"""A trained run, loaded once from its folder: `TrainedRun.load(path)`.

It owns what every later stage asks of a run: its stage, its folds and their saved configs (the
done-or-allowed-incomplete check is applied here, once, at load), which fold validated each
case-day, the one cache-folder rule, and its saved predictions and their manifests (through the
artifact layout of src.core.artifacts).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from src.core.artifacts import FoldDir, FoldRecord, Prediction, RunDir
from src.core.errors import DataError
from src.data.description import DatasetDescription, read_description
from src.data.image_cache import is_image_cache
from src.data.layout import load_prediction
from src.data.volumes import cache_dir_for
from src.engine.stages import StageSpec, get_stage


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


def _check_complete(fold: FoldDir, allow_incomplete: bool) -> None:
    """A fold without its done marker (killed, or still training) is refused, unless allowed."""
    if fold.is_done():
        return
    if not allow_incomplete:
        raise DataError(f"{fold.path}: incomplete fold (no done marker: training was interrupted or is still "
                        "running); finish it with --resume, or pass --allow-incomplete to use it anyway")
    print(f"warning: {fold.path}: incomplete fold used (--allow-incomplete)", file=sys.stderr)


@dataclass(frozen=True)
class TrainedRun:
    """A run folder with its trained folds ("0", "1", ..., then "all"), all of one stage."""

    dir: RunDir
    folds: dict[str, TrainedFold]

    @classmethod
    def load(cls, path: str | Path, allow_incomplete: bool = False, require_weights: bool = True) -> TrainedRun:
        """The run at `path`: every fold with weights (or, without `require_weights`, a config: the
        report reads logs and OOF only), each complete (or `allow_incomplete`, with a warning)."""
        run = RunDir(path)
        found = run.folds(require_weights)
        gone = [f for f in run.completed_folds() if f not in found]
        if gone:
            raise DataError(f"{run.path}: fold {gone[0]} was completed ({run.completed_path.name}) but is gone or has "
                            f"no weights; retrain it, or remove it from {run.completed_path} to go on without it")
        for fold in found.values():
            _check_complete(fold, allow_incomplete)
        folds = {k: TrainedFold(f, f.read_config()) for k, f in found.items()}
        stages = sorted({f.stage for f in folds.values()})
        if len(stages) > 1:
            raise DataError(f"{run.path}: folds of different stages {stages}")
        get_stage(stages[0])  # an unknown stage is refused here
        return cls(run, folds)

    def __repr__(self) -> str:
        return f"TrainedRun({str(self.path)!r}, folds={list(self.folds)})"

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def stage(self) -> StageSpec:
        return get_stage(next(iter(self.folds.values())).stage)

    @property
    def config(self) -> dict:
        """The first fold's saved config fields (data and cache folders are the same in every fold)."""
        return next(iter(self.folds.values())).record.config

    @property
    def numbered_folds(self) -> list[str]:
        return [f for f in self.folds if f != "all"]

    def require(self, output: str, flag: str) -> TrainedRun:
        """This run, if its stage predicts `output` ("probabilities", "presence", "box"); else a one-line error."""
        if self.stage.output != output:
            raise DataError(f"{flag} {self.path}: a {self.stage.name} run predicts {self.stage.output}, "
                            f"{flag} needs {output}")
        return self

    def select(self, folds: str | list[str] | tuple[str, ...] | None, split: str) -> list[TrainedFold]:
        """Folds to predict with: the given list, "all" (the fold-all model), or by default every numbered fold."""
        if folds is None or folds == "" or (not isinstance(folds, str) and not folds):
            names = self.numbered_folds or ["all"]
        else:
            names = folds.split(",") if isinstance(folds, str) else [str(f) for f in folds]
        missing = [f for f in names if f not in self.folds]
        if missing:
            raise DataError(f"{self.path}: no trained fold {missing[0]} (has {', '.join(self.folds)})")
        if split == "oof" and "all" in names:
            raise DataError(f"{self.path}: the fold-all model saw every case-day, it has no out-of-fold predictions")
        return [self.folds[f] for f in names]

    def case_day_folds(self) -> dict[str, int]:
        """case-day -> the numbered fold that validated it."""
        return {cd: int(f.fold) for f in self.folds.values() if f.fold != "all" for cd in f.val_case_days}

    def data_dir(self, data_dir: str | Path | None = None) -> Path:
        """--data-dir, else the run's."""
        return Path(data_dir or self.config.get("data_dir", "data"))

    def cache_dir(self, data_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
        """--cache-dir, else the cache of --data-dir, else the run's own."""
        if cache_dir or data_dir:
            return cache_dir_for(cache_dir, data_dir)
        return cache_dir_for(self.config.get("cache_dir"), self.data_dir())

    def manifest(self, split: str) -> dict | None:
        """The manifest of the run's saved `split` predictions (None when there are none)."""
        return self.dir.predictions(split).read_manifest()

    def prediction_files(self, split: str) -> dict[str, Path]:
        """case-day -> prediction file: the run's `split` predictions when complete, else for oof the
        training-time out-of-fold files of its folds."""
        files = self.dir.predictions(split).files()
        if files or split != "oof":
            return files
        out = {}
        for fold in self.folds.values():
            out.update(fold.dir.oof_files())
        return out

    def predictions(self, split: str, case_days: list[str]) -> dict[str, Prediction]:
        """Saved predictions (a classifier gate, a detector's boxes) for the given case-days."""
        files = self.prediction_files(split)
        missing = [cd for cd in case_days if cd not in files]
        if missing:
            raise DataError(f"{self.path}: no {split} prediction for {missing[0]} "
                            f"(run python -m src.predict --run {self.path} --split {split})")
        return {cd: load_prediction(files[cd]) for cd in case_days}


def check_image_run(run: TrainedRun, description: DatasetDescription, data_dir: Path,
                    flag: str = "--runs", output: str = "probabilities") -> TrainedRun:
    """`run`, if it predicts `output` (segments, or with "presence" classifies) 2D images of the channels and
    classes of `description` (its cache's description says so); else a one-line error naming `flag` and the run."""
    run.require(output, flag)
    cache = run.cache_dir()
    if not is_image_cache(cache):
        raise DataError(f"{flag} {run.path}: its cache {cache} holds no 2D images (missing, or the GI slices); "
                        f"{data_dir} holds 2D images")
    trained = read_description(cache)
    for what in ("channels", "labels"):
        if getattr(trained, what) != getattr(description, what):
            raise DataError(f"{flag} {run.path}: trained on {what} {list(getattr(trained, what))} ({cache}), "
                            f"{data_dir} has {list(getattr(description, what))}")
    return run

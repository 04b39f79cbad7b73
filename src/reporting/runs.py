"""What a report reads of a trained run (src.inference.runs.TrainedRun) beyond its folds' configs:
each fold's log, best validation score, pixel threshold and out-of-fold probability files."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from src.core.errors import DataError
from src.inference.runs import TrainedFold


def fold_log(fold: TrainedFold) -> pd.DataFrame:
    """log.csv of the fold (empty before its first epoch)."""
    try:
        log = fold.dir.read_log()
    except (OSError, ValueError) as exc:
        raise DataError(f"{fold.dir.log_path}: cannot read CSV ({exc})") from None
    return pd.DataFrame() if log is None else log


def best_score(fold: TrainedFold) -> float:
    """done.json's best_score, else the best val_score of log.csv, else NaN."""
    best = (fold.dir.read_done() or {}).get("best_score")
    log = fold_log(fold)
    if best is None and "val_score" in log and log["val_score"].notna().any():
        best = log["val_score"].max()
    best = float("nan") if best is None else float(best)
    return best if math.isfinite(best) else float("nan")


def threshold(fold: TrainedFold) -> float:
    """The pixel threshold the fold was validated at."""
    return float(fold.record.config.get("threshold", 0.5))


def oof_arrays(fold: TrainedFold) -> list[tuple[str, Path]]:
    """(case_day, file) of the fold's out-of-fold probability arrays (a detector's boxes left out)."""
    return [(cd, p) for cd, p in fold.dir.oof_files().items() if p.suffix == ".npy"]

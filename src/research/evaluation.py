"""What the studies share: per-class pixel metrics, a fold's model and its predictions, the train CLI,
tables (CSV and markdown) and the peak memory of this process."""
from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from src.core.atomic import atomic_path, write_text_atomic
from src.core.checkpoint import load_checkpoint
from src.core.errors import DataError
from src.core.memory import status_kib
from src.data.geometry import Geometry
from src.data.layout import CLASSES
from src.data.samples import StackSpec, volume_batches
from src.data.volumes import CaseDay, VolumeCache
from src.inference.runs import TrainedFold
from src.metrics.competition import score_volumes
from src.models.registry import create_model

CLASS_METRICS = ("dice", "jaccard", "precision", "recall", "accuracy")


# ---- metrics -----------------------------------------------------------------------------------
def confusion(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(3, 4) int64 pixel counts TP, FP, FN, TN per class of (Z, 3, H, W) boolean volumes."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape or pred.ndim != 4:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} must be equal (Z, 3, H, W) shapes")
    axes = (0, 2, 3)
    tp = np.count_nonzero(pred & truth, axis=axes)
    fp = np.count_nonzero(pred & ~truth, axis=axes)
    fn = np.count_nonzero(~pred & truth, axis=axes)
    tn = pred.size // pred.shape[1] - tp - fp - fn
    return np.stack([tp, fp, fn, tn], axis=1).astype(np.int64)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def class_metrics(counts: np.ndarray) -> dict[str, float]:
    """Pixel-level Dice, Jaccard, precision, recall, accuracy per class (`dice_stomach`, ...) of summed
    counts, and their means over the classes (`dice`, `jaccard`, ...). 0/0 is NaN (left out of means)."""
    out: dict[str, float] = {}
    for c, name in enumerate(CLASSES):
        tp, fp, fn, tn = (float(v) for v in counts[c])
        out[f"dice_{name}"] = _ratio(2 * tp, 2 * tp + fp + fn)
        out[f"jaccard_{name}"] = _ratio(tp, tp + fp + fn)
        out[f"precision_{name}"] = _ratio(tp, tp + fp)
        out[f"recall_{name}"] = _ratio(tp, tp + fn)
        out[f"accuracy_{name}"] = _ratio(tp + tn, tp + fp + fn + tn)
    for metric in CLASS_METRICS:
        values = [out[f"{metric}_{name}"] for name in CLASSES if not math.isnan(out[f"{metric}_{name}"])]
        out[metric] = float(np.mean(values)) if values else math.nan
    return out


def evaluate(pairs: Iterable[tuple[str, np.ndarray, np.ndarray]], threshold: float = 0.5) -> dict[str, float]:
    """Competition score (score, comp_dice, hausdorff) and the class metrics of (case_day, probabilities,
    truth) volumes, the probabilities thresholded at `threshold`. One pass; volumes are not kept."""
    counts = np.zeros((len(CLASSES), 4), np.int64)

    def masks() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        nonlocal counts
        for case_day, probs, truth in pairs:
            pred, truth = np.asarray(probs) > threshold, np.asarray(truth) > 0
            counts += confusion(pred, truth)
            yield case_day, pred, truth

    result = score_volumes(masks())
    return {"score": result.score, "comp_dice": result.dice, "hausdorff": result.hausdorff, **class_metrics(counts)}


# ---- a trained fold ----------------------------------------------------------------------------
def load_fold_model(fold: TrainedFold) -> tuple[nn.Module, dict]:
    """The fold's best weights in the model its config names (CPU, eval mode), and that config."""
    cfg = fold.record.config
    if fold.stage != "seg2d":
        raise DataError(f"{fold.dir.config_path}: stage {fold.stage!r}; only 2.5D (seg2d) runs can be studied")
    model = create_model(cfg["arch"], in_channels=cfg["channels"], classes=3, aux_head=cfg.get("aux_weight", 0) > 0)
    state = load_checkpoint(fold.dir.weights)["model"]
    state = {k.removeprefix("module."): v for k, v in state.items() if k != "n_averaged"}  # EMA weights
    model.load_state_dict(state)
    return model.eval(), cfg


@torch.no_grad()
def predict_case_day(model: nn.Module, cfg: dict, vol: CaseDay, batch_size: int = 16) -> np.ndarray:
    """(Z, 3, H, W) float32 probabilities of one case-day at its original resolution."""
    depth, height, width = vol.shape
    geometry = Geometry(cfg["img_size"], cfg.get("geometry", "resize"))
    spec = StackSpec(cfg["channels"], cfg["stride"], cfg.get("anchor", "center"))
    out = np.zeros((depth, 3, height, width), np.float32)
    for zs, batch in volume_batches(vol, spec, geometry, batch_size, None):
        logits = model(batch)
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        out[zs] = geometry.from_model(torch.sigmoid(logits.float()), height, width, None).numpy()
    return out


def fold_pairs(model: nn.Module, cfg: dict, cache: VolumeCache, case_days: Iterable[str],
               batch_size: int = 16) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for cd in case_days:
        vol = cache.load(cd)
        yield cd, predict_case_day(model, cfg, vol, batch_size), np.asarray(vol.mask)


# ---- the train CLI ------------------------------------------------------------------------------
def train(args: list[str], log_file: Path | None = None) -> float:
    """Run `python -m src.train ARGS` in a subprocess; seconds taken. A failure is a DataError with its
    last error line (the full output is in `log_file` when given)."""
    cmd = [sys.executable, "-m", "src.train", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if log_file is not None:
        write_text_atomic(log_file, f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["(no output)"]
        where = f" (log: {log_file})" if log_file is not None else ""
        raise DataError(f"training failed with exit code {proc.returncode}: {lines[-1]}{where}")
    return seconds


# ---- tables ------------------------------------------------------------------------------------
def _cell(value, digits: int) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table of a DataFrame, floats to `digits` places, NaN blank."""
    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    rows = ["| " + " | ".join(_cell(v, digits) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *rows]) + "\n"


def write_tables(table: pd.DataFrame, csv_path: Path, md_path: Path, md_table: pd.DataFrame | None = None,
                 digits: int = 3) -> None:
    with atomic_path(csv_path, suffix=".csv") as tmp:
        table.to_csv(tmp, index=False)
    write_text_atomic(md_path, markdown(table if md_table is None else md_table, digits))


# ---- memory ------------------------------------------------------------------------------------
def rss_bytes() -> int:
    """Resident set size of this process now."""
    return status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (VmHWM)."""
    return status_kib("VmHWM") * 1024

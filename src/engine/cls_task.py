"""Empty-slice gate: the `cls` stage of src.train, and the segmenter-as-classifier rule.

`python -m src.train --stage cls --fold 0 --arch cls_effb4` trains a slice classifier on exactly the
segmenters' 2.5D inputs (same stack, geometry, augmentation and sampler; target: whether each class
is present in the slice, BCE by default). Validation predicts every slice of each validation
case-day and saves its (Z, 3) presence probabilities as float16 oof/<case_day>.npy (the segmenters'
place, another shape). Checkpoints are chosen by the mean over classes of the average precision
(threshold-free: the ensemble tunes the gate threshold); a class with no positive validation slice
has no AP and enters with its true-negative rate at --threshold instead. Logged per class: AP, and
precision and recall at --threshold.

`presence_from_probs` is the 1st place's alternative gate, a segmenter used as a classifier: a class
is present in a slice when more than `min_pixels` of its probabilities exceed `prob`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from sklearn.metrics import average_precision_score

from src.core.atomic import save_npy_atomic
from src.core.errors import DataError
from src.core.ids import CLASSES
from src.data.samples import volume_batches
from src.data.volumes import CaseDay
from src.engine.config import Seg2DConfig
from src.engine.seg_task import Seg2DTask
from src.engine.trainer import Evaluation, Trainer, prepared_cache
from src.models.registry import create_model, get_arch
from src.ensembling.postprocess import pixel_gate


@dataclass(frozen=True)
class ClsConfig(Seg2DConfig):
    """The slice classifier: the 2.5D input fields of Seg2DConfig, a cls_* arch, BCE."""

    stage: str = "cls"
    arch: str = "cls_effb0"
    loss: str = "bce"


def slice_presence(mask: np.ndarray) -> np.ndarray:
    """(Z, 3, H, W) mask -> (Z, 3) bool: the class has a pixel in the slice."""
    mask = np.asarray(mask)
    return mask.reshape(*mask.shape[:2], -1).any(axis=2)


def presence_from_probs(probs: np.ndarray, min_pixels=12, prob=0.6) -> np.ndarray:
    """(Z, 3, H, W) segmenter probabilities -> (Z, 3) bool presence: more than `min_pixels` pixels
    above `prob` (scalars, or one value per class); the 1st place used 12 pixels at 0.6."""
    classes = probs.shape[1]
    return pixel_gate(probs, np.broadcast_to(min_pixels, (classes,)), np.broadcast_to(prob, (classes,)))


def presence_table(probs: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> pd.DataFrame:
    """Per class on (N, 3) presence probabilities and truth: slices, positives, AP, and precision,
    recall, F1 and true-negative rate at `threshold` (NaN where undefined)."""
    rows = []
    for c, name in enumerate(CLASSES):
        p, t = probs[:, c].astype(np.float64), truth[:, c].astype(bool)
        pred = p >= threshold
        tp, fp, fn, tn = (np.count_nonzero(pred & t), np.count_nonzero(pred & ~t),
                          np.count_nonzero(~pred & t), np.count_nonzero(~pred & ~t))
        precision = tp / (tp + fp) if tp + fp else np.nan
        recall = tp / (tp + fn) if tp + fn else np.nan
        rows.append({"class": name, "slices": len(t), "positives": int(t.sum()),
                     "ap": average_precision_score(t, p) if t.any() else np.nan,
                     "precision": precision, "recall": recall,
                     "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan,
                     "tnr": tn / (tn + fp) if tn + fp else np.nan})
    return pd.DataFrame(rows)


def presence_score(table: pd.DataFrame) -> float:
    """Mean over classes of the AP, or of the true-negative rate for a class with no positive."""
    return float(np.where(table["positives"] > 0, table["ap"], table["tnr"]).mean())


class ClsTask(Seg2DTask):
    """The 2.5D task with a classifier: same samples and inputs, the slice's presence as target."""

    def __init__(self, cfg: ClsConfig, cache_dir: str | Path):
        try:
            stage = get_arch(cfg.arch).stage
        except KeyError as exc:
            raise DataError(f"--arch: {exc.args[0]}") from None
        if stage != "cls":
            raise DataError(f"--arch {cfg.arch} is a {stage} arch; the cls stage needs a cls_* arch")
        if cfg.positive_only or cfg.aux_weight:
            raise DataError("config: --positive-only and --aux-weight do not apply to a classifier")
        super().__init__(cfg, cache_dir)

    def build_model(self) -> nn.Module:
        return create_model(self.cfg.arch, in_channels=self.cfg.channels, classes=len(CLASSES))

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        image = batch["image"].to(device, non_blocking=True)
        if self.cfg.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return self.criterion(model(image), batch["presence"].to(device, non_blocking=True))

    def predict_volume(self, model: nn.Module, vol: CaseDay, device: torch.device,
                       box=None, batch_size: int | None = None) -> np.ndarray:
        """(Z, 3) float32 presence probabilities of every slice (of the crop `box` if given)."""
        out = np.zeros((vol.shape[0], len(CLASSES)), dtype=np.float32)
        for zs, batch in volume_batches(vol, self.spec, self.geometry, batch_size or self.cfg.batch_size, box):
            batch = batch.to(device)
            if self.cfg.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            out[zs] = torch.sigmoid(model(batch).float()).cpu().numpy()
        return out

    def evaluate(self, model: nn.Module, case_days: list[str], device: torch.device, oof_dir: Path) -> Evaluation:
        thr = self.cfg.threshold
        probs, truths, rows = [], [], []
        for cd in case_days:
            vol = self.cache.load(cd)
            p, t = self.predict_volume(model, vol, device).astype(np.float16), slice_presence(vol.mask)
            save_npy_atomic(oof_dir / f"{cd}.npy", p)  # scored as saved: float16 ties change the AP
            rows.append({"case_day": cd, "slices": len(t), "positives": int(t.sum()),
                         "predicted": int((p >= thr).sum()), "accuracy": float(((p >= thr) == t).mean())})
            probs.append(p)
            truths.append(t)
        table = presence_table(np.concatenate(probs).astype(np.float32), np.concatenate(truths), thr)
        score = presence_score(table)
        metrics = {"val_score": score}
        for row in table.to_dict("records"):
            metrics.update({f"val_{k}_{row['class']}": row[k] for k in ("ap", "precision", "recall")})
        return Evaluation(score, metrics, pd.DataFrame(rows))


CONFIG = ClsConfig


def run(cfg: ClsConfig, resume: bool) -> float:
    """Train one fold of a slice classifier (the `cls` stage of src.train)."""
    cache_dir, case_days = prepared_cache(cfg)
    return Trainer(ClsTask(cfg, cache_dir), case_days).fit(resume=resume)

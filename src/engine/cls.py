"""Empty-slice gate: the `cls` stage of src.train, and the segmenter-as-classifier rule. On a cache of
2D images the stage trains the image classifier instead (src.engine.image_presence).

`python -m src.train --stage cls --fold 0 --arch cls_effb4` trains a slice classifier on exactly the
segmenters' 2.5D inputs (same stack, geometry, augmentation and sampler; target: whether each class
is present in the slice, BCE by default). Validation predicts every slice of each validation
case-day and saves its (Z, 3) presence probabilities as float16 oof/<case_day>.npy (the segmenters'
place, another shape). Checkpoints are chosen by the mean over classes of the average precision
(threshold-free: the ensemble tunes the gate threshold); a class with no positive validation slice
has no AP and enters with its true-negative rate at --threshold instead. Logged per class: AP, and
precision and recall at --threshold.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from src.data.image_cache import is_image_cache
from src.data.layout import CLASSES
from src.data.samples import volume_batches
from src.data.volumes import CaseDay
from src.engine.config import ClsConfig
from src.engine.image_presence import ImagePresenceTask
from src.engine.seg2d import Seg2DTask
from src.engine.stages import StageSpec, register_stage
from src.engine.trainer import Evaluation, Trainer
from src.metrics.presence import presence_score, presence_table, slice_presence
from src.models.registry import create_model


class ClsTask(Seg2DTask):
    """The 2.5D task with a classifier: same samples and inputs, the slice's presence as target."""

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

    def evaluate(self, model: nn.Module, case_days: list[str], device: torch.device,
                 save: Callable[[str, np.ndarray], object]) -> Evaluation:
        thr = self.cfg.threshold
        probs, truths, rows = [], [], []
        for cd in case_days:
            vol = self.cache.load(cd)
            p, t = self.predict_volume(model, vol, device).astype(np.float16), slice_presence(vol.mask)
            save(cd, p)  # scored as saved: float16 ties change the AP
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


def cls_task(cfg: ClsConfig, cache_dir) -> ClsTask | ImagePresenceTask:
    """The cls stage's task for a cache: the image classifier on 2D images (src.engine.image_presence),
    else the slice classifier."""
    return (ImagePresenceTask if is_image_cache(cache_dir) else ClsTask)(cfg, cache_dir)


register_stage(StageSpec("cls", ClsConfig, cls_task, "presence", None, Trainer,
                         "empty-slice classifier: (Z, 3) presence probabilities; on 2D images, (K,) per image"))

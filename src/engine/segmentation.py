"""Validation shared by the segmentation tasks (2.5D and 3D): whole volumes, the competition
metric, out-of-fold probabilities."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from src.data.volumes import VolumeCache
from src.engine.config import TrainConfig
from src.engine.trainer import Evaluation
from src.metrics.competition import score_volumes


class VolumeSegmentationTask:
    """Validation shared by 2.5D and 3D segmenters: predict (Z, 3, H, W) probabilities per case-day,
    save them as float16 OOF, threshold and score with the competition metric."""

    cfg: TrainConfig
    cache: VolumeCache

    def evaluate(self, model: nn.Module, case_days: list[str], device: torch.device,
                 save: Callable[[str, np.ndarray], object]) -> Evaluation:
        def pairs():
            for cd in case_days:
                vol = self.cache.load(cd)
                probs = self.predict_volume(model, vol, device)
                save(cd, probs)
                yield cd, probs > self.cfg.threshold, np.asarray(vol.mask) > 0

        result = score_volumes(pairs())
        metrics = {"val_score": result.score, "val_dice": result.dice, "val_hausdorff": result.hausdorff}
        return Evaluation(result.score, metrics, result.per_case_day)

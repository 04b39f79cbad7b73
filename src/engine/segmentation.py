"""What the segmentation tasks share: validation of whole volumes (2.5D and 3D: the competition
metric, out-of-fold probabilities), and for the 2D-input tasks (2.5D slices, 2D images) a bad option
value as a one-line error and a batch brought to the device."""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from src.core.errors import DataError
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


@contextlib.contextmanager
def option_errors():
    """A ValueError of a config value (geometry, loss, augmentation) becomes a one-line DataError."""
    try:
        yield
    except ValueError as exc:
        raise DataError(f"config: {exc}") from None


def to_device(cfg: TrainConfig, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A (B, C, H, W) input batch on `device`, channels-last when the config asks for it."""
    batch = batch.to(device, non_blocking=True)
    return batch.contiguous(memory_format=torch.channels_last) if cfg.channels_last else batch

"""3D segmentation for the trainer (the `seg3d` stage of src.train): MONAI nets on roi crops,
whole-volume validation by Gaussian sliding window, patch-wise and cascade designs.

`python -m src.train --stage seg3d --fold 0 --arch segresnet3d --roi 160,160,80 --sw-overlap 0.7`.
Input: 1 channel, the case-day normalised by its intensity window; output: 3 multilabel sigmoid
channels. Crops are taken at the native resolution (see src.data.volume3d); patch-wise archs
(unet3d_patch, cascade3d) train on roi H x W x `slab` crops. Models returning several logit maps
(the cascade's two stages) have each supervised by the `--loss` against the same mask, summed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from src.core.errors import DataError
from src.data.samples import intensity_window, normalise
from src.data.volume3d import CropDataset, build_augment3d, parse_roi
from src.data.volumes import CaseDay, VolumeCache
from src.engine.config import Seg3DConfig
from src.engine.losses import CombinedLoss
from src.engine.segmentation import VolumeSegmentationTask
from src.engine.stages import StageSpec, register_stage
from src.engine.trainer import Trainer
from src.models.registry import create_model
from src.models.seg3d import Seg3DNet


class Seg3DTask(VolumeSegmentationTask):
    """Trains on random roi crops; predicts whole case-days with the model's own procedure."""

    def __init__(self, cfg: Seg3DConfig, cache_dir: str | Path):
        self.cfg = cfg
        self.cache_dir = cache_dir
        self.cache = VolumeCache(cache_dir)
        try:
            self.roi = parse_roi(cfg.roi)
            self.window = parse_roi(cfg.sw_roi or cfg.roi)
            self.criterion = CombinedLoss(cfg.loss)
            self.augment = build_augment3d(cfg.augment3d)
        except ValueError as exc:  # a bad option value: report it as one line
            raise DataError(f"config: {exc}") from None
        with torch.device("meta"):  # no memory: only the crop depth and the size divisor are read
            probe = self.build_model()
        self.crop = (probe.crop_depth(self.roi[0]), *self.roi[1:])
        window = (probe.crop_depth(self.window[0]), *self.window[1:])
        if any(n % probe.divisor for n in self.crop + window):
            raise DataError(f"config: arch {cfg.arch} needs crop and window sides (D,H,W {self.crop} and {window}, "
                            f"from --roi/--sw-roi/--slab) that are multiples of {probe.divisor}")

    def build_model(self) -> Seg3DNet:
        return create_model(self.cfg.arch, in_channels=1, classes=3, slab=self.cfg.slab, scale=self.cfg.cascade_scale)

    def train_dataset(self, case_days: list[str]) -> CropDataset:
        return CropDataset(self.cache_dir, case_days, self.crop, self.cfg.samples_per_volume, self.cfg.pos_ratio,
                           self.augment, seed=self.cfg.seed)

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        image = batch["image"].to(device, non_blocking=True)
        target = batch["mask"].to(device, non_blocking=True)
        out = model(image)
        return sum(self.criterion(logits, target) for logits in (out if isinstance(out, tuple) else (out,)))

    def predict_volume(self, model: Seg3DNet, vol: CaseDay, device: torch.device, box=None,
                       batch_size: int | None = None) -> np.ndarray:
        """(Z, 3, H, W) float32 probabilities at the original resolution; `batch_size` windows per
        forward pass (default --sw-batch-size). A 3D model sees the whole volume: it takes no crop box."""
        if box is not None:
            raise DataError(f"the {self.cfg.arch} 3D model predicts whole volumes; it takes no crop box (no --crop)")
        image = normalise(np.asarray(vol.image), intensity_window(vol.image))
        logits = model.predict(torch.from_numpy(image)[None, None].to(device), self.window,
                               self.cfg.sw_overlap, batch_size or self.cfg.sw_batch_size)
        return np.ascontiguousarray(torch.sigmoid(logits.float())[0].transpose(0, 1).cpu().numpy())


register_stage(StageSpec("seg3d", Seg3DConfig, Seg3DTask, "probabilities", "3d", Trainer,
                         "MONAI 3D segmenter: (Z, 3, H, W) probabilities"))

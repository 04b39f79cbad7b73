"""3D segmentation for the trainer (the `seg3d` stage of src.train): MONAI nets on roi crops,
whole-volume validation by Gaussian sliding window, patch-wise and cascade designs.

`python -m src.train --stage seg3d --fold 0 --arch segresnet3d --roi 160,160,80 --sw-overlap 0.7`.
Input: 1 channel, the case-day normalised by its intensity window; output: 3 multilabel sigmoid
channels. Crops are taken at the native resolution (see src.data.volume3d); patch-wise archs
(unet3d_patch, cascade3d) train on roi H x W x `slab` crops. Models returning several logit maps
(the cascade's two stages) have each supervised by the `--loss` against the same mask, summed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from src.core.errors import DataError
from src.data.samples import intensity_window, normalise
from src.data.volume3d import CropDataset, build_augment3d, parse_roi
from src.data.volumes import CaseDay, VolumeCache
from src.engine.config import TrainConfig
from src.engine.losses import CombinedLoss
from src.engine.seg_task import VolumeSegmentationTask
from src.engine.trainer import Trainer, prepared_cache
from src.models.registry import create_model
from src.models.seg3d import Seg3DNet


@dataclass(frozen=True)
class Seg3DConfig(TrainConfig):
    """3D segmentation; rois are H,W,D like the 1st place's 160x160x80 crops."""

    stage: str = "seg3d"
    arch: str = "segresnet3d"
    batch_size: int = 2
    roi: str = "160,160,80"  # training crop H,W,D (patch-wise archs use D = slab)
    sw_roi: str = ""  # H,W,D of the inference window; default: roi
    sw_overlap: float = 0.5  # sliding-window overlap (the 1st place used 0.7)
    sw_batch_size: int = 2
    samples_per_volume: int = 4  # crops per case-day and epoch
    pos_ratio: float = 0.67  # share of crops centred on a labelled voxel
    augment3d: str = "default"  # none | default
    slab: int = 16  # slices per slab of the patch-wise nets
    cascade_scale: int = 4  # the cascade's stage-1 downsampling factor (every axis)


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
            _check_options(cfg)
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

    def predict_volume(self, model: Seg3DNet, vol: CaseDay, device: torch.device) -> np.ndarray:
        """(Z, 3, H, W) float32 probabilities at the original resolution."""
        image = normalise(np.asarray(vol.image), intensity_window(vol.image))
        logits = model.predict(torch.from_numpy(image)[None, None].to(device), self.window,
                               self.cfg.sw_overlap, self.cfg.sw_batch_size)
        return np.ascontiguousarray(torch.sigmoid(logits.float())[0].transpose(0, 1).cpu().numpy())


def _check_options(cfg: Seg3DConfig) -> None:
    if not 0 <= cfg.sw_overlap < 1:
        raise ValueError(f"sw_overlap {cfg.sw_overlap}: expected 0 <= overlap < 1")
    if not 0 <= cfg.pos_ratio <= 1:
        raise ValueError(f"pos_ratio {cfg.pos_ratio}: expected a share in [0, 1]")
    if min(cfg.sw_batch_size, cfg.samples_per_volume, cfg.slab, cfg.cascade_scale) < 1:
        raise ValueError("sw_batch_size, samples_per_volume, slab and cascade_scale must be positive")
    if cfg.channels_last:
        raise ValueError("channels_last is for 2D nets; 3D nets keep the default layout")
    if cfg.encoder_weights:
        raise ValueError("encoder_weights: the 3D nets have no pretrained encoder")


CONFIG = Seg3DConfig


def run(cfg: Seg3DConfig, resume: bool) -> float:
    """Train one fold of a 3D segmenter (the `seg3d` stage of src.train)."""
    cache_dir, case_days = prepared_cache(cfg)
    return Trainer(Seg3DTask(cfg, cache_dir), case_days).fit(resume=resume)

"""The 2.5D segmentation stage (`seg2d`, the default of src.train): neighbouring slices as channels,
smp decoders on smp / timm encoders, an optional per-class presence head. On a cache of 2D images the
stage builds the 2D image task instead (`seg2d_task`, src.engine.image2d)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from src.data.augment import build_augment
from src.data.geometry import Geometry
from src.data.image_cache import is_image_cache
from src.data.samples import SliceDataset, StackSpec, volume_batches
from src.data.volumes import CaseDay, VolumeCache
from src.engine.config import Seg2DConfig
from src.engine.image2d import ImageSegmentationTask
from src.engine.losses import CombinedLoss
from src.engine.segmentation import VolumeSegmentationTask, option_errors, to_device
from src.engine.stages import StageSpec, register_stage
from src.engine.trainer import Trainer
from src.models.registry import create_model


class Seg2DTask(VolumeSegmentationTask):
    """2.5D segmentation: neighbouring slices as channels, smp decoders, optional presence head."""

    def __init__(self, cfg: Seg2DConfig, cache_dir: str | Path):
        self.cfg = cfg
        self.cache_dir = cache_dir
        self.cache = VolumeCache(cache_dir)
        with option_errors():
            self.spec = StackSpec(cfg.channels, cfg.stride, cfg.anchor)
            self.geometry = Geometry(cfg.img_size, cfg.geometry)
            self.criterion = CombinedLoss(cfg.loss)
            self.augment = build_augment(cfg.augment)
        self.presence_loss = nn.BCEWithLogitsLoss()

    def build_model(self) -> nn.Module:
        return create_model(self.cfg.arch, in_channels=self.cfg.channels, classes=3, aux_head=self.cfg.aux_weight > 0)

    def train_dataset(self, case_days: list[str]) -> SliceDataset:
        return SliceDataset(self.cache_dir, case_days, self.spec, self.geometry, self.augment,
                            seed=self.cfg.seed, positive_only=self.cfg.positive_only, tail_drop=self.cfg.tail_drop)

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        target = batch["mask"].to(device, non_blocking=True)
        out = model(to_device(self.cfg, batch["image"], device))
        if self.cfg.aux_weight > 0:
            logits, presence_logits = out
            return self.criterion(logits, target) + self.cfg.aux_weight * self.presence_loss(
                presence_logits.float(), batch["presence"].to(device))
        return self.criterion(out, target)

    def predict_volume(self, model: nn.Module, vol: CaseDay, device: torch.device,
                       box=None, batch_size: int | None = None) -> np.ndarray:
        """(Z, 3, H, W) float32 probabilities at the original resolution."""
        depth, height, width = vol.shape
        out = np.zeros((depth, 3, height, width), dtype=np.float32)
        for zs, batch in volume_batches(vol, self.spec, self.geometry, batch_size or self.cfg.batch_size, box):
            logits = model(to_device(self.cfg, batch, device))
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            out[zs] = self.geometry.from_model(torch.sigmoid(logits.float()), height, width, box).cpu().numpy()
        return out

    def predict_volumes(self, model: nn.Module, vols: list[CaseDay], device: torch.device, boxes: list,
                        batch_size: int | None = None) -> list[np.ndarray]:
        """predict_volume of several volumes of one depth (a case-day and its flips), their slice
        batches stacked into one forward pass each (batch_size slices of every volume). A subclass
        with its own predict_volume (the classifier) predicts them one after the other."""
        if type(self).predict_volume is not Seg2DTask.predict_volume:
            return [self.predict_volume(model, v, device, box=b, batch_size=batch_size) for v, b in zip(vols, boxes)]
        size = batch_size or self.cfg.batch_size
        outs = [np.zeros((v.shape[0], 3, *v.shape[1:]), dtype=np.float32) for v in vols]
        streams = [volume_batches(v, self.spec, self.geometry, size, b) for v, b in zip(vols, boxes)]
        for parts in zip(*streams):
            logits = model(to_device(self.cfg, torch.cat([b for _, b in parts]), device))
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            probs, start = torch.sigmoid(logits.float()), 0
            for out, vol, box, (zs, part) in zip(outs, vols, boxes, parts):
                _, height, width = vol.shape
                out[zs] = self.geometry.from_model(probs[start:start + len(part)], height, width, box).cpu().numpy()
                start += len(part)
        return outs


def seg2d_task(cfg: Seg2DConfig, cache_dir: str | Path) -> Seg2DTask | ImageSegmentationTask:
    """The seg2d stage's task for a cache: ImageSegmentationTask when it holds 2D images (src.engine.image2d
    says why), else the 2.5D Seg2DTask."""
    return (ImageSegmentationTask if is_image_cache(cache_dir) else Seg2DTask)(cfg, cache_dir)


register_stage(StageSpec("seg2d", Seg2DConfig, seg2d_task, "probabilities", "2d", Trainer,
                         "2.5D segmenter: (Z, 3, H, W) probabilities; on 2D images, (K, H, W)"))

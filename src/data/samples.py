"""The 2.5D sampler: a training sample is slice z of a case-day plus its neighbours as channels.

Read from the memory-mapped cache (never from PNGs), normalised per case-day, brought to the
model's input by `Geometry`, augmented by a per-sample seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from src.data.augment import sample_seed
from src.data.geometry import Box, Geometry
from src.data.volumes import CaseDay, VolumeCache

ANCHORS = ("center", "start")


@dataclass(frozen=True)
class StackSpec:
    """Which neighbours form the channels: `center` gives z-s..z+s (i-2, i, i+2 for 3 channels,
    stride 2), `start` gives z, z+s, z+2s (the public baseline's s, s+2, s+4); clamped at the ends."""

    channels: int = 3
    stride: int = 2
    anchor: str = "center"

    def __post_init__(self):
        if self.channels < 1 or self.stride < 1 or self.anchor not in ANCHORS:
            raise ValueError(f"bad 2.5D stack: channels={self.channels} stride={self.stride} anchor={self.anchor!r}")

    def indices(self, z: int, depth: int) -> np.ndarray:
        first = -(self.channels // 2) if self.anchor == "center" else 0
        offsets = (np.arange(self.channels) + first) * self.stride
        return np.clip(z + offsets, 0, depth - 1)


def intensity_window(image: np.ndarray) -> tuple[float, float]:
    """Per-case-day (low, high) intensity: 0.5th and 99.5th percentiles of a strided subsample."""
    sample = np.asarray(image[:, ::4, ::4], dtype=np.float32)
    lo, hi = np.percentile(sample, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1.0))


def normalise(stack: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return np.clip((stack.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def tail_slices(mask: np.ndarray, n: int) -> np.ndarray:
    """Boolean (Z,) marking the n slices after the last annotated one (the ambiguous tail)."""
    out = np.zeros(mask.shape[0], dtype=bool)
    annotated = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if n > 0 and annotated.size:
        out[annotated[-1] + 1:annotated[-1] + 1 + n] = True
    return out


class SliceDataset(Dataset):
    """2.5D training samples (case-day, z) drawn from a VolumeCache.

    positive_only keeps slices with any label; tail_drop removes the ambiguous tail from the loss
    by not sampling those slices (they remain visible as neighbours of other slices).
    """

    def __init__(self, cache_dir: str | Path, case_days: list[str], spec: StackSpec, geometry: Geometry,
                 augment: A.Compose | None = None, seed: int = 0, positive_only: bool = False,
                 tail_drop: int = 0):
        self.cache = VolumeCache(cache_dir)
        self.case_days = list(case_days)
        self.spec, self.geometry, self.augment, self.seed = spec, geometry, augment, seed
        self.epoch = 0
        self._volumes: dict[int, tuple[CaseDay, tuple[float, float]]] = {}
        items, positive = [], []
        for i, cd in enumerate(self.case_days):
            mask = self.cache.load(cd).mask
            labelled = mask.reshape(mask.shape[0], -1).any(axis=1)
            keep = ~tail_slices(mask, tail_drop)
            if positive_only:
                keep &= labelled
            items.extend((i, int(z)) for z in np.flatnonzero(keep))
            positive.extend(bool(labelled[z]) for z in np.flatnonzero(keep))
        self.items = items
        self.positive = np.array(positive, dtype=bool)  # per item: the slice has a label (class-balanced sampling)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def volume(self, i: int) -> tuple[CaseDay, tuple[float, float]]:
        if i not in self._volumes:  # opened lazily, so each loader worker maps its own files
            vol = self.cache.load(self.case_days[i])
            self._volumes[i] = (vol, intensity_window(vol.image))
        return self._volumes[i]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i, z = self.items[index]
        vol, window = self.volume(i)
        image = normalise(self.geometry.to_model(vol.image[self.spec.indices(z, vol.shape[0])]), window)
        mask = self.geometry.to_model(vol.mask[z], nearest=True)
        if self.augment is not None:  # albumentations works channel-last
            self.augment.set_random_seed(sample_seed(self.seed, self.epoch, index))
            out = self.augment(image=image.transpose(1, 2, 0), mask=mask.transpose(1, 2, 0))
            image, mask = out["image"].transpose(2, 0, 1), out["mask"].transpose(2, 0, 1)
        mask_t = torch.from_numpy(np.ascontiguousarray(mask)).float()
        return {"image": torch.from_numpy(np.ascontiguousarray(image)),
                "mask": mask_t, "presence": (mask_t.flatten(1).amax(1) > 0).float(),
                "index": torch.tensor(index)}


def volume_batches(vol: CaseDay, spec: StackSpec, geometry: Geometry, batch_size: int,
                   box: Box | None = None, window: tuple[float, float] | None = None,
                   ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Inference input for a whole case-day: (slice indices, (B, C, size, size) float32 tensor)."""
    window = window or intensity_window(vol.image)
    depth = vol.shape[0]
    for start in range(0, depth, batch_size):
        zs = np.arange(start, min(depth, start + batch_size))
        batch = [normalise(geometry.to_model(vol.image[spec.indices(z, depth)], box), window) for z in zs]
        yield zs, torch.from_numpy(np.stack(batch))

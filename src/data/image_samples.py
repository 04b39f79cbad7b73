"""2D image samples: an image to predict (`ImageInput`), brought to the model's input, its index map as
one target channel per class (one-vs-rest), and probabilities back to an index map.

Input scaling, per channel: uint8 / 255; any other type (uint16) divided by the channel's maximum in
that image (at least 1), so 8-, 12- and 16-bit data all land in [0, 1] without a dataset statistic.
Then `Geometry` (resize or letterbox to the square input), then the config's albumentations preset,
seeded per (run seed, epoch, sample index) as the 2.5D sampler does.
"""
from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from src.data.augment import sample_seed
from src.data.geometry import Box, Geometry
from src.data.image_cache import ImageCache


@dataclass(frozen=True)
class ImageInput:
    """One 2D image to predict, shaped as the prediction code (FoldModel, TTA) takes a case-day volume:
    `image` channels first (C, H, W), so `shape` ends with (H, W) and flipping axis -1 (W) or -2 (H) mirrors
    the picture; `name` its sample id or cache key (named in messages); `mask` the (H, W) index map of a
    cached entry, None for a test image."""

    name: str
    image: np.ndarray
    mask: np.ndarray | None = None

    @classmethod
    def of(cls, name: str, pixels: np.ndarray, mask: np.ndarray | None = None) -> ImageInput:
        """From (H, W, C) pixels as read or cached (a view, nothing copied)."""
        return cls(name, np.moveaxis(np.asarray(pixels), 2, 0), mask)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.image.shape

    @property
    def pixels(self) -> np.ndarray:
        """(H, W, C), as read (a view)."""
        return np.moveaxis(self.image, 0, 2)


def model_input(image: np.ndarray, geometry: Geometry, box: Box | None = None) -> np.ndarray:
    """(H, W, C) image -> (C, size, size) float32 in [0, 1] (scaled per channel as the module says)."""
    planes = np.moveaxis(np.asarray(image), 2, 0)
    if planes.dtype == np.uint8:
        peak = np.full(len(planes), 255.0, dtype=np.float32)
    else:
        peak = np.maximum(planes.reshape(len(planes), -1).max(axis=1), 1).astype(np.float32)
    return geometry.to_model(planes, box).astype(np.float32) / peak[:, None, None]


def one_hot(mask: np.ndarray, n_classes: int) -> np.ndarray:
    """(H, W) index map -> (n_classes, H, W) float32, channel k the pixels of class k + 1."""
    return (mask[None] == np.arange(1, n_classes + 1, dtype=mask.dtype)[:, None, None]).astype(np.float32)


def label_map(probs: np.ndarray, threshold: float) -> np.ndarray:
    """(K, H, W) per-class probabilities -> (H, W) uint8 index map: the most probable class where its
    probability is above `threshold`, else background (the classes of a 2D dataset do not overlap)."""
    return np.where(probs.max(axis=0) > threshold, probs.argmax(axis=0) + 1, 0).astype(np.uint8)


class ImageDataset(Dataset):
    """Training samples of a 2D cache: one per entry key, {"image", "mask" (one-vs-rest), "index"}."""

    def __init__(self, cache: ImageCache, keys: list[str], geometry: Geometry, augment: A.Compose | None = None,
                 seed: int = 0):
        self.cache, self.keys = cache, list(keys)
        self.geometry, self.augment, self.seed = geometry, augment, seed
        self.n_classes = cache.description.n_classes
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask = self.cache.load(self.keys[index])
        image = model_input(image, self.geometry)
        mask = self.geometry.to_model(np.asarray(mask), nearest=True)
        if self.augment is not None:  # albumentations works channel-last
            self.augment.set_random_seed(sample_seed(self.seed, self.epoch, index))
            out = self.augment(image=image.transpose(1, 2, 0), mask=mask)
            image, mask = out["image"].transpose(2, 0, 1), out["mask"]
        return {"image": torch.from_numpy(np.ascontiguousarray(image)),
                "mask": torch.from_numpy(one_hot(mask, self.n_classes)), "index": torch.tensor(index)}

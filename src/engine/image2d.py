"""Segmentation of 2D images (Carvana, EBHI-Seg, nnU-Net 2D): one sample per cached image, the model's
input channels and classes from the dataset description, one sigmoid output per class trained with the
config's CombinedLoss on one-vs-rest targets, validated at each image's full size with the dataset's
metric (Dice per image, src.metrics.overlap).

How it is chosen: the seg2d stage builds this task instead of the 2.5D one when the cache's description
says dims "2d" (`src.engine.seg2d.seg2d_task`). Why: a 2D dataset needs no new stage, flag or arch
list (the same Seg2DConfig, smp archs, trainer and blend group), `python -m src.train` on 2D data
works with its defaults, and everything that rebuilds a fold's task from its stage and a cache (the
prediction's FoldModel, the kernel bench) gets the task that fits the data without a second rule.

The ids the Trainer gets are the cache's entry keys; their folds come from the 2D folds file
(`read_folds`). The Seg2DConfig options about neighbouring slices (SLICE_FIELDS) have no meaning here:
set to anything but their default they are a one-line error. Input scaling and augmentation:
src.data.image_samples.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from src.core.errors import DataError
from src.data.augment import build_augment
from src.data.folds import entry_folds
from src.data.geometry import Box, Geometry
from src.data.image_cache import ImageCache, entry_key
from src.data.image_samples import ImageDataset, ImageInput, label_map, model_input
from src.engine.config import SLICE_FIELDS, Seg2DConfig, changed_fields
from src.engine.losses import CombinedLoss
from src.engine.segmentation import option_errors, to_device
from src.engine.trainer import Evaluation
from src.metrics.overlap import image_means, image_table
from src.models.registry import create_model


class ImageSegmentationTask:
    """The seg2d stage on a cache of 2D images: (K, H, W) probabilities per image."""

    def __init__(self, cfg: Seg2DConfig, cache_dir: str | Path):
        self.cfg = cfg
        self.cache = ImageCache(cache_dir)
        self.description = self.cache.description
        slice_options = changed_fields(cfg, SLICE_FIELDS)
        if slice_options:
            raise DataError(f"--{slice_options[0].replace('_', '-')} is an option of slice volumes; "
                            f"{self.cache.root} holds 2D images")
        if self.description.metric != "dice":
            raise DataError(f"{self.cache.root}: metric {self.description.metric!r}; 2D images are scored with dice")
        with option_errors():
            self.geometry = Geometry(cfg.img_size, cfg.geometry)
            self.criterion = CombinedLoss(cfg.loss)
            self.augment = build_augment(cfg.augment)

    @functools.cached_property
    def entries(self) -> pd.DataFrame:
        """The cache's table of train images, by key (read once, at the first validation)."""
        return self.cache.table().set_index("key")

    def build_model(self) -> nn.Module:
        return create_model(self.cfg.arch, in_channels=self.description.n_channels, classes=self.description.n_classes)

    def read_folds(self, path: str | Path) -> dict[str, int]:
        """The fold of each entry key, from the 2D folds file (a GI one is a one-line error)."""
        return entry_folds(path)

    @staticmethod
    def excluded_id(sample_id: str) -> str:
        """--exclude names sample ids, as make_folds --exclude does; the trainer's ids are their cache keys."""
        return entry_key(sample_id)

    def train_dataset(self, keys: list[str]) -> ImageDataset:
        return ImageDataset(self.cache, keys, self.geometry, self.augment, seed=self.cfg.seed)

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        return self.criterion(model(to_device(self.cfg, batch["image"], device)), batch["mask"].to(device, non_blocking=True))

    def predict_volume(self, model: nn.Module, image: ImageInput, device: torch.device, box: Box | None = None,
                       batch_size: int | None = None) -> np.ndarray:
        """(K, H, W) float32 probabilities of one image at its own size; `box` a crop of it; one image, so
        no batch_size."""
        _, height, width = image.shape
        batch = torch.from_numpy(model_input(image.pixels, self.geometry, box))[None]
        probs = torch.sigmoid(model(to_device(self.cfg, batch, device)).float())
        return self.geometry.from_model(probs, height, width, box)[0].cpu().numpy()

    def evaluate(self, model: nn.Module, keys: list[str], device: torch.device,
                 save: Callable[[str, np.ndarray], object]) -> Evaluation:
        """Predict each image, save its probabilities (float16 OOF), threshold them into an index map and
        score it: val_score is the mean over images of the per-image Dice (mean over classes)."""
        table = self.entries

        def images():
            for key in keys:
                entry = ImageInput.of(key, *self.cache.load(key))
                probs = self.predict_volume(model, entry, device)
                save(key, probs)
                yield key, table.at[key, "stratum"], label_map(probs, self.cfg.threshold), np.asarray(entry.mask)

        per_image = image_means(image_table(images(), self.description.labels)).rename(columns={"id": "key"})
        per_image.insert(1, "id", table.loc[per_image["key"], "id"].to_numpy())
        dice, jaccard = float(per_image["dice"].mean()), float(per_image["jaccard"].mean())
        return Evaluation(dice, {"val_score": dice, "val_dice": dice, "val_jaccard": jaccard}, per_image)

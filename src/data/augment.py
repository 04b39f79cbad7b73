"""Albumentations presets for 2.5D training (validation never augments).

Each sample is augmented with a seed derived from (run seed, epoch, sample index), so a run is
reproducible whatever the number of loader workers or processes, and a resumed run sees the same
augmentations as an uninterrupted one.
"""
from __future__ import annotations

import albumentations as A
import cv2

PRESETS = ("none", "light", "strong")


def build_augment(preset: str) -> A.Compose | None:
    """`none`: no transform; `light`: flip, shift-scale-rotate, brightness/contrast;
    `strong`: light plus elastic/grid/optical distortion and coarse dropout (the top solutions' set)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; valid: {', '.join(PRESETS)}")
    if preset == "none":
        return None
    ops = [
        A.HorizontalFlip(p=0.5),
        A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1), rotate=(-15, 15),
                 border_mode=cv2.BORDER_CONSTANT, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
    ]
    if preset == "strong":
        ops += [
            A.OneOf([A.ElasticTransform(alpha=1, sigma=50, p=1.0),
                     A.GridDistortion(num_steps=5, distort_limit=0.3, p=1.0),
                     A.OpticalDistortion(distort_limit=0.3, p=1.0)], p=0.25),
            A.CoarseDropout(num_holes_range=(1, 8), hole_height_range=(0.04, 0.1),
                            hole_width_range=(0.04, 0.1), p=0.3),
        ]
    return A.Compose(ops)


def sample_seed(run_seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed unique to (run, epoch, sample)."""
    return (run_seed * 1_000_003 + epoch * 7_919 * 1_000_003 + index * 2_654_435_761) % (2**32)

"""The 3D sampler: random roi crops of cached case-day volumes, for the 3D segmenters.

Layout: torch's channel-first (C, D, H, W), D the slice axis: the image is (1, D, H, W) float32
normalised per case-day (src.data.samples.intensity_window), the mask (3, D, H, W) float32.
Rois are written H,W,D on the command line (the 1st place's "160x160x80") and held as (D, H, W).

Crops are taken at the native resolution (in-plane spacing is 1.50 or 1.63 mm in every real size,
so no resampling is needed and predictions come back at the original resolution as they are);
the crop is read straight from the memory-mapped cache, and padded with zeros at the end of any
axis where the volume is smaller than the roi (80-slice case-days under an 80+ deep roi, tiny
test volumes). Crop centres come from monai's positive/negative sampler: with probability
`pos_ratio` on a labelled voxel, otherwise on an unlabelled one (a seeded subsample of each per
case-day). Everything random is seeded from (run seed, epoch, sample index), so results do not
depend on the loader's worker count and a resumed run sees the same samples.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAffined,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPad,
)
from monai.transforms.utils import generate_pos_neg_label_crop_centers
from monai.utils import convert_to_tensor
from torch.utils.data import Dataset

from src.data.augment import sample_seed
from src.data.samples import intensity_window, normalise
from src.data.volumes import CaseDay, VolumeCache

PRESETS3D = ("none", "default")
SAMPLED_VOXELS = 20_000  # labelled and unlabelled candidate centres kept per case-day
Roi = tuple[int, int, int]  # (depth, height, width)


def parse_roi(text: str) -> Roi:
    """`"160,160,80"` (H,W,D) -> (80, 160, 160) (D, H, W); ValueError when not three positive ints."""
    try:
        height, width, depth = (int(p) for p in text.split(","))
    except ValueError:
        raise ValueError(f"roi {text!r}: expected H,W,D as three integers, e.g. 160,160,80") from None
    if min(height, width, depth) < 1:
        raise ValueError(f"roi {text!r}: sides must be positive")
    return depth, height, width


def build_augment3d(preset: str) -> Compose | None:
    """`none`, or `default`: left-right flip, small in-plane rotation and scaling, intensity scale/shift."""
    if preset not in PRESETS3D:
        raise ValueError(f"unknown 3D augmentation preset {preset!r}; valid: {', '.join(PRESETS3D)}")
    if preset == "none":
        return None
    keys = ("image", "mask")
    return Compose([
        RandFlipd(keys, prob=0.5, spatial_axis=2),
        RandAffined(keys, prob=0.5, rotate_range=(0.26, 0.0, 0.0), scale_range=(0.1, 0.1, 0.1),
                    mode=("bilinear", "nearest"), padding_mode="zeros"),  # rotation about D: in-plane
        RandScaleIntensityd("image", factors=0.15, prob=0.5),
        RandShiftIntensityd("image", offsets=0.1, prob=0.5),
    ])


def candidate_centres(mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flat (Z*H*W) indices of up to SAMPLED_VOXELS labelled and unlabelled voxels of a (Z, 3, H, W)
    mask; an empty side borrows the other's, so an unlabelled case-day still yields crops."""
    union = np.asarray(mask).any(axis=1).ravel()
    fg = np.flatnonzero(union)
    if fg.size > SAMPLED_VOXELS:
        fg = rng.choice(fg, SAMPLED_VOXELS, replace=False)
    draws = rng.integers(0, union.size, 2 * SAMPLED_VOXELS)
    bg = draws[~union[draws]][:SAMPLED_VOXELS]
    return (fg if fg.size else bg), (bg if bg.size else fg)


class CropDataset(Dataset):
    """`samples_per_volume` random roi crops per case-day and epoch: dicts of image (1, D, H, W),
    mask (3, D, H, W) and index."""

    def __init__(self, cache_dir: str | Path, case_days: list[str], roi: Roi, samples_per_volume: int = 4,
                 pos_ratio: float = 0.67, augment: Compose | None = None, seed: int = 0):
        self.cache = VolumeCache(cache_dir)
        self.case_days = list(case_days)
        self.roi, self.samples_per_volume, self.pos_ratio = tuple(roi), samples_per_volume, pos_ratio
        self.augment, self.seed = augment, seed
        self.pad = SpatialPad(self.roi, method="end")
        self.epoch = 0
        self._volumes: dict[int, tuple[CaseDay, tuple[float, float], np.ndarray, np.ndarray]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.case_days) * self.samples_per_volume

    def volume(self, i: int) -> tuple[CaseDay, tuple[float, float], np.ndarray, np.ndarray]:
        """(case-day, intensity window, labelled and unlabelled candidate centres); opened lazily, so
        each loader worker maps its own files; the candidates are seeded by (seed, i) alone."""
        if i not in self._volumes:
            vol = self.cache.load(self.case_days[i])
            fg, bg = candidate_centres(vol.mask, np.random.default_rng([self.seed, i]))
            self._volumes[i] = (vol, intensity_window(vol.image), fg, bg)
        return self._volumes[i]

    def crop_box(self, i: int, rng: np.random.RandomState) -> tuple[slice, slice, slice]:
        """A (z, y, x) crop of at most roi size inside volume i, centred by monai's pos/neg sampler."""
        vol, _, fg, bg = self.volume(i)
        (centre,) = generate_pos_neg_label_crop_centers(self.roi, 1, self.pos_ratio, vol.shape, fg, bg, rng,
                                                        allow_smaller=True)
        sizes = np.minimum(self.roi, vol.shape)
        starts = np.asarray(centre) - sizes // 2
        return tuple(slice(int(s), int(s + n)) for s, n in zip(starts, sizes))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = index // self.samples_per_volume
        vol, window, _, _ = self.volume(i)
        crop_seed, augment_seed = np.random.SeedSequence(sample_seed(self.seed, self.epoch, index)).generate_state(2)
        z, y, x = self.crop_box(i, np.random.RandomState(crop_seed))
        image = normalise(vol.image[z, y, x], window)[None]
        mask = np.asarray(vol.mask[z, :, y, x], dtype=np.float32).transpose(1, 0, 2, 3)
        sample = {"image": self.pad(torch.from_numpy(image)), "mask": self.pad(torch.from_numpy(np.ascontiguousarray(mask)))}
        if self.augment is not None:
            sample = self.augment.set_random_state(seed=int(augment_seed))(sample)
        return {"image": convert_to_tensor(sample["image"], dtype=torch.float32).contiguous(),
                "mask": convert_to_tensor(sample["mask"], dtype=torch.float32).contiguous(),
                "index": torch.tensor(index)}

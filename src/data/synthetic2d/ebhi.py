"""Synthetic H&E colon tissue in the EBHI-Seg layout.

<root>/<category>/image/<name>.png (RGB) and <root>/<category>/label/<name>.png (gray, gland 255, else 0),
six categories with counts in the real proportions, and, as in the real download, images whose label
file is missing. An image is pink stroma with purple nuclei and glands: purple epithelium around a pale
lumen, ringed by dense nuclei; the label is the glands. Glands grow more irregular from Normal to
Adenocarcinoma.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from src.core.atomic import atomic_dir
from src.core.errors import DataError
from src.core.outputs import TRUTH_ENDINGS, new_dataset_paths
from src.data.synthetic2d.common import Summary2D, check_counts, check_size, save_image
from src.data.synthetic2d.shapes import finish, place, region, rng_for, smooth_noise, superellipse, wobble

# category: (real image count, glands per image, gland radius as a fraction of the side, irregularity)
CATEGORIES = {
    "Adenocarcinoma": (795, (4, 8), (0.06, 0.14), 0.45),
    "High-grade IN": (186, (3, 6), (0.08, 0.15), 0.3),
    "Low-grade IN": (639, (3, 6), (0.08, 0.14), 0.18),
    "Normal": (76, (4, 7), (0.07, 0.11), 0.06),
    "Polyp": (474, (2, 4), (0.12, 0.2), 0.12),
    "Serrated adenoma": (58, (3, 5), (0.09, 0.14), 0.35),
}
MIN_PER_CATEGORY = 2
_STROMA, _EPITHELIUM, _LUMEN, _NUCLEUS = (238, 172, 204), (170, 104, 190), (242, 222, 240), (72, 38, 118)
_IMAGE, _UNLABELLED = 0, 1  # generator streams


def category_counts(images: int) -> dict[str, int]:
    """`images` split over the categories in the real proportions, each at least MIN_PER_CATEGORY
    (largest remainders first, the largest categories giving way when the minimum needs room)."""
    real = np.array([c[0] for c in CATEGORIES.values()], float)
    share = images * real / real.sum()
    counts = np.maximum(np.floor(share).astype(int), MIN_PER_CATEGORY)
    for k in np.argsort(-(share - np.floor(share)), kind="stable"):
        if counts.sum() < images:
            counts[k] += 1
    while counts.sum() > images:
        counts[np.argmax(np.where(counts > MIN_PER_CATEGORY, counts - share, -np.inf))] -= 1  # most over its share
    return dict(zip(CATEGORIES, counts.tolist()))


def render(seed: int, index: int, category: str, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (H, W) uint8 0/255 label of image `index`."""
    width, height = size
    _, glands, radius, irregular = CATEGORIES[category]
    rng = rng_for(seed, _IMAGE, index)
    shape = (height, width)
    side = min(width, height)
    label, lumen = np.zeros(shape, bool), np.zeros(shape, bool)
    for _ in range(rng.integers(glands[0], glands[1] + 1)):
        r = rng.uniform(*radius) * side
        outline = wobble(superellipse((r, r * rng.uniform(0.6, 1.0)), n=72), rng, irregular, lobes=8)
        center, angle = rng.uniform(0, 1, 2) * (width, height), rng.uniform(0, 180)
        label |= region(shape, place(outline, center, angle))
        lumen |= region(shape, place(outline, center, angle, (0.45, 0.4)))
    rim = cv2.dilate(label.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~cv2.erode(
        label.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    image = np.empty((*shape, 3), np.float32)
    image[:] = _STROMA
    image[label] = _EPITHELIUM
    image[lumen] = _LUMEN
    image *= (1 + 0.06 * smooth_noise(rng, shape, 24) + 0.04 * smooth_noise(rng, shape, 4))[..., None]
    seeds = rng.random(shape) < np.where(rim, 0.06, np.where(label & ~lumen, 0.02, 0.006))
    nuclei = cv2.dilate(seeds.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))).astype(bool)
    image[nuclei] = 0.4 * image[nuclei] + 0.6 * np.asarray(_NUCLEUS, np.float32)
    return finish(image, rng, 4.0), (label * 255).astype(np.uint8)


def generate(out_dir: str | Path, images: int = 60, unlabelled: int = 1, seed: int = 0, size: tuple[int, int] = (224, 224),
             overwrite: bool = False) -> Summary2D:
    """Write a synthetic EBHI-Seg dataset of `images` images under `out_dir` (atomically); `unlabelled`
    of them, drawn at random, have no label file."""
    check_counts(images=(images, MIN_PER_CATEGORY * len(CATEGORIES)), unlabelled=(unlabelled, 0), seed=(seed, 0))
    if unlabelled >= images:
        raise DataError(f"--unlabelled {unlabelled}: must be below --images {images}")
    size = check_size(size)
    out, _ = new_dataset_paths(out_dir, None, TRUTH_ENDINGS["ebhi"], overwrite)
    counts = category_counts(images)
    categories = [c for c, n in counts.items() for _ in range(n)]
    no_label = set(rng_for(seed, _UNLABELLED).choice(images, unlabelled, replace=False).tolist())
    with atomic_dir(out) as tmp:
        for index, category in enumerate(categories):
            name = f"GT{rng_for(seed, _IMAGE, index, 1).integers(2010000, 2020000)}-{index + 1:03d}.png"
            image, label = render(seed, index, category, size)
            save_image(tmp / category / "image" / name, image)
            if index not in no_label:
                save_image(tmp / category / "label" / name, label)
    return Summary2D("ebhi", str(out), None, size, images - unlabelled, 0, unlabelled,
                     ", ".join(f"{c} {n}" for c, n in counts.items()))

"""Synthetic 2D cases in the nnU-Net v2 raw layout.

<out>/dataset.json, imagesTr/<case>_<XXXX>.png (one 8-bit gray PNG per channel), labelsTr/<case>.png
(index map 0..K) and imagesTs/, with the test labels in `<out>_test_truth/` beside the folder. Class k
is one kind of shape (ellipse, rectangle, triangle, star), never overlapping another, absent from some
cases; each channel shows the classes at its own brightness order over a dark, smoothly varying
background.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from src.core.atomic import atomic_dir
from src.core.errors import DataError
from src.core.outputs import TRUTH_ENDINGS, new_dataset_paths
from src.data.synthetic2d.common import Summary2D, check_counts, check_size, save_image
from src.data.synthetic2d.shapes import finish, place, region, rng_for, smooth_noise, star, superellipse

CHANNELS = ("T1", "T2", "FLAIR", "PD")
SHAPES = {"ellipse": superellipse((1.0, 0.65)), "rectangle": superellipse((1.0, 0.6), 12.0),
          "triangle": star(np.ones(3), -np.pi / 2), "star": star(np.tile([1.0, 0.45], 5))}
PRESENT = 0.85  # chance that a class appears in a case
TRIES = 20  # placements tried for a shape before it is left out
_CASE = 0  # generator stream


def case_name(index: int) -> str:
    return f"case_{index:03d}"


def dataset_name(out: Path) -> str:
    """`Dataset501_Synthetic` -> `Synthetic`; any other folder name as it is."""
    m = re.fullmatch(r"Dataset\d{3}_(.+)", out.name)
    return m.group(1) if m else out.name


def levels(channels: int, classes: int) -> np.ndarray:
    """(channels, classes + 1) gray level of the background and each class: the classes rotate their
    brightness order from channel to channel, so together the channels tell every class apart."""
    order = (np.arange(classes)[None, :] + np.arange(channels)[:, None]) % classes + 1
    return np.concatenate([np.full((channels, 1), 50.0), 90 + 140 * order / classes], axis=1)


def render(seed: int, index: int, channels: int, classes: int, size: tuple[int, int]):
    """(channels, H, W) uint8 images and (H, W) uint8 index map of case `index`."""
    width, height = size
    rng = rng_for(seed, _CASE, index)
    label = np.zeros((height, width), np.uint8)
    for k, outline in enumerate(list(SHAPES.values())[:classes], start=1):
        if rng.random() >= PRESENT:
            continue
        for _ in range(rng.integers(1, 3)):
            for _ in range(TRIES):
                r = rng.uniform(0.1, 0.18) * min(width, height)
                inside = region(label.shape, place(outline, rng.uniform(r, (width - r, height - r)), rng.uniform(0, 360), (r, r)))
                if not (label[inside] > 0).any():
                    label[inside] = k
                    break
    gray = levels(channels, classes)[:, label] + rng.normal(0, 6, (channels, 1, 1))
    gray += 12 * np.stack([smooth_noise(rng, label.shape, 16) for _ in range(channels)])
    return np.stack([finish(g, rng, 5.0) for g in gray]), label


def write_case(folder: Path, label_folder: Path, seed: int, index: int, channels: int, classes: int,
               size: tuple[int, int]) -> None:
    """One case's channel PNGs into `folder` and its label PNG into `label_folder`."""
    images, label = render(seed, index, channels, classes, size)
    for c, image in enumerate(images):
        save_image(folder / f"{case_name(index)}_{c:04d}.png", image)
    save_image(label_folder / f"{case_name(index)}.png", label)


def generate(out_dir: str | Path, cases: int = 20, test_cases: int = 4, channels: int = 2, classes: int = 2, seed: int = 0,
             size: tuple[int, int] = (128, 128), truth_out: str | Path | None = None, overwrite: bool = False) -> Summary2D:
    """Write a synthetic nnU-Net v2 raw dataset under `out_dir` (atomically, e.g. Dataset501_Synthetic) and
    the test labels into the folder `truth_out`, by default `<out_dir>_test_truth`."""
    check_counts(cases=(cases, 1), test_cases=(test_cases, 0), channels=(channels, 1), classes=(classes, 1), seed=(seed, 0))
    for name, value, names in (("channels", channels, CHANNELS), ("classes", classes, SHAPES)):
        if value > len(names):
            raise DataError(f"--{name} {value}: at most {len(names)} ({', '.join(names)})")
    size = check_size(size)
    out, truth = new_dataset_paths(out_dir, truth_out, TRUTH_ENDINGS["nnunet"], overwrite)
    description = {"channel_names": {str(c): CHANNELS[c] for c in range(channels)},
                   "labels": {"background": 0, **{name: k for k, name in enumerate(list(SHAPES)[:classes], start=1)}},
                   "numTraining": cases, "file_ending": ".png", "name": dataset_name(out),
                   "description": "synthetic shapes (src.make_synthetic --format nnunet)"}
    with atomic_dir(out) as tmp:
        (tmp / "imagesTs").mkdir()
        (tmp / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
        for index in range(cases):
            write_case(tmp / "imagesTr", tmp / "labelsTr", seed, index, channels, classes, size)
        if test_cases:
            with atomic_dir(truth) as tmp_truth:
                for index in range(cases, cases + test_cases):
                    write_case(tmp / "imagesTs", tmp_truth, seed, index, channels, classes, size)
    return Summary2D("nnunet", str(out), str(truth) if test_cases else None, size, cases, test_cases, 0,
                     f"{channels} channel(s), {classes} class(es)")

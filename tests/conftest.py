"""Shared fixtures: `tiny_dataset` writes a small dataset in the Kaggle layout."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import cv2
import numpy as np
import pandas as pd
import pytest

from src.data import rle
from src.data.layout import CLASSES, slice_id


class Spec(NamedTuple):
    """One case-day to generate: the file names carry width first, then height."""

    case: int
    day: int
    width: int
    height: int
    n_slices: int
    spacing: float = 1.5

    @property
    def case_day(self) -> str:
        return f"case{self.case}_day{self.day}"


DEFAULT_TRAIN = (Spec(1, 0, 80, 64, 10), Spec(1, 3, 80, 64, 8), Spec(2, 0, 64, 96, 12, 1.63),
                 Spec(5, 7, 72, 72, 9))


@dataclass(frozen=True)
class TinyDataset:
    """A generated dataset: its root folder and the arrays written there, keyed by case-day."""

    root: Path
    images: dict[str, np.ndarray]  # uint16 (Z, H, W), train and test
    masks: dict[str, np.ndarray]  # uint8 (Z, 3, H, W), train only

    @property
    def csv(self) -> Path:
        return self.root / "train.csv"

    def slice_path(self, case_day: str, z: int, split: str = "train") -> Path:
        """Path of the 0-based z-th slice PNG of a case-day."""
        return sorted((self.root / split / case_day.split("_")[0] / case_day / "scans").glob("*.png"))[z]


def _organ_masks(spec: Spec, rng: np.random.Generator) -> np.ndarray:
    """Ellipses per class over a random run of slices; off-centre so a transposed decode differs."""
    out = np.zeros((spec.n_slices, len(CLASSES), spec.height, spec.width), np.uint8)
    for c in range(len(CLASSES)):
        first = int(rng.integers(0, spec.n_slices // 2))
        last = int(rng.integers(first + 1, spec.n_slices))
        cx, cy = int(rng.integers(spec.width // 5, spec.width // 2)), int(rng.integers(spec.height // 5, spec.height // 2))
        for z in range(first, last):
            axes = (int(rng.integers(1, max(2, spec.width // 4))), int(rng.integers(1, max(2, spec.height // 6))))
            cv2.ellipse(out[z, c], (cx, cy), axes, 0, 0, 360, 1, -1)
    return out


def _write_case_day(root: Path, split: str, spec: Spec, rng: np.random.Generator) -> np.ndarray:
    folder = root / split / f"case{spec.case}" / spec.case_day / "scans"
    folder.mkdir(parents=True)
    image = rng.integers(0, 4000, size=(spec.n_slices, spec.height, spec.width), dtype=np.uint16)
    for z, plane in enumerate(image, start=1):
        name = f"slice_{z:04d}_{spec.width}_{spec.height}_{spec.spacing:.2f}_{spec.spacing:.2f}.png"
        assert cv2.imwrite(str(folder / name), plane)
    return image


def _ids(spec: Spec) -> list[str]:
    return [slice_id(spec.case_day, z) for z in range(1, spec.n_slices + 1)]


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Callable[..., TinyDataset]:
    """Factory writing a tiny Kaggle-layout dataset under `tmp_path / name`.

    make(name="data", train=DEFAULT_TRAIN, test=(), seed=0) -> TinyDataset. `train` and `test` are
    sequences of Spec or plain tuples (case, day, width, height, n_slices[, spacing]) naming distinct
    case-days; DEFAULT_TRAIN is four case-days of three cases, 64-96 px with W != H, 8-12 slices, one
    at 1.63 mm. Train case-days get random 16-bit slices, ellipse masks (some slices empty) and
    train.csv rows (RLE via src.data.rle); test case-days get slices and sample_submission.csv rows.
    An empty `train` still writes a header-only train.csv. Deterministic for a seed.
    """

    def make(name: str = "data", train: Sequence[Spec | tuple] = DEFAULT_TRAIN,
             test: Sequence[Spec | tuple] = (), seed: int = 0) -> TinyDataset:
        root = tmp_path / name
        root.mkdir()
        rng = np.random.default_rng(seed)
        images, masks, rows, test_rows = {}, {}, [], []
        for spec in [Spec(*s) for s in train]:
            images[spec.case_day] = _write_case_day(root, "train", spec, rng)
            masks[spec.case_day] = _organ_masks(spec, rng)
            rows += [(sid, cls, rle.encode(masks[spec.case_day][z, c]))
                     for z, sid in enumerate(_ids(spec)) for c, cls in enumerate(CLASSES)]
        for spec in [Spec(*s) for s in test]:
            images[spec.case_day] = _write_case_day(root, "test", spec, rng)
            test_rows += [(sid, cls, "") for sid in _ids(spec) for cls in CLASSES]
        pd.DataFrame(rows, columns=["id", "class", "segmentation"]).to_csv(root / "train.csv", index=False)
        if test:
            pd.DataFrame(test_rows, columns=["id", "class", "predicted"]).to_csv(root / "sample_submission.csv", index=False)
        return TinyDataset(root, images, masks)

    return make


class Killed(Exception):
    """Stands in for a process killed between two epochs."""


def fit_until_killed(trainer, epochs: int = 1) -> None:
    """Run trainer.fit() and kill it right after the resume state of `epochs` epochs is saved."""
    real, saved = trainer._save_last, []

    def save_then_die(checkpoint):
        real(checkpoint)
        saved.append(1)
        if len(saved) >= epochs:
            raise Killed

    trainer._save_last = save_then_die
    with pytest.raises(Killed):
        trainer.fit()

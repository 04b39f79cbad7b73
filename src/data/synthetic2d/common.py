"""What the 2D generators share: the summary they return, the checks of their options, image files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from src.core.errors import DataError

MIN_SIDE = 32  # smaller images leave no room for the shapes


@dataclass(frozen=True)
class Summary2D:
    """What a 2D generator wrote: labelled train images, test images, images without a label."""

    format: str
    out_dir: str
    truth_path: str | None
    size: tuple[int, int]  # (W, H)
    train: int
    test: int
    unlabelled: int
    detail: str  # the format's own counts (cars, categories, channels and classes)

    def line(self) -> str:
        """One line for the command's output."""
        return (f"wrote {self.out_dir} ({self.format}, {self.size[0]}x{self.size[1]}): train {self.train} labelled "
                f"images, {self.unlabelled} without a label; test {self.test} images; {self.detail}; "
                f"truth {self.truth_path}")


def check_counts(**counts: tuple[int, int]) -> None:
    """DataError naming the option of the first count (value, minimum) below its minimum."""
    for name, (value, minimum) in counts.items():
        if not isinstance(value, int) or value < minimum:
            raise DataError(f"--{name.replace('_', '-')} must be an integer of at least {minimum}, got {value!r}")


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """(W, H) as ints, each at least MIN_SIDE; DataError otherwise."""
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise DataError(f"--size {size!r}: expected (W, H)") from None
    if min(width, height) < MIN_SIDE:
        raise DataError(f"--size {width}x{height}: each side must be at least {MIN_SIDE} pixels")
    return width, height


def save_image(path: Path, array: np.ndarray, **params) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array; the format follows the file ending (PIL `params`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **params)


def save_index_gif(path: Path, index: np.ndarray) -> None:
    """Write a small index map (values 0, 1, ...) as a palette GIF whose pixels read back as those
    indices, as Carvana's masks do (index 0 black, 1 white)."""
    image = Image.frombytes("P", (index.shape[1], index.shape[0]), np.ascontiguousarray(index, np.uint8).tobytes())
    image.putpalette([0, 0, 0, 255, 255, 255])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="GIF", optimize=False)

"""What every dataset format provides, and the one reader of 2D image files.

A format reads a dataset in its real layout: `detect` says whether a folder has that layout,
`describe` builds the DatasetDescription from the files, `samples` lists a split's images with their
labels, fold group and stratum, `read_image` and `read_label` decode one sample, checked. Any fault is a
DataError naming the file.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from src.core.errors import DataError
from src.data.description import DatasetDescription
from src.data.layout import check_pixels

IMAGE_ENDINGS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk, the last 12 bytes of every whole PNG


@dataclass(frozen=True)
class Sample:
    """One 2D image of a split and its label.

    `id` is unique in the split and is the image's path relative to its split folder without the file
    ending (label images of a submission are written under it); `images` holds one file (RGB or gray)
    or one file per channel (nnU-Net); `label_text` is the label's text form where the layout has one
    besides the label file (Carvana's RLE), checked against it.
    """

    id: str
    images: tuple[Path, ...]
    label: Path | None = None
    group: str = ""
    stratum: str = ""
    label_text: str | None = None


@dataclass(frozen=True)
class SampleList:
    """A split's samples, and the images skipped for having no label (reported, never trained on)."""

    samples: list[Sample]
    unlabelled: list[Path] = field(default_factory=list)

    def report(self) -> str | None:
        """One line naming the count and the first unlabelled images, or None when there are none."""
        if not self.unlabelled:
            return None
        first = ", ".join(str(p) for p in self.unlabelled[:3])
        return f"{len(self.unlabelled)} image(s) without a label skipped (first: {first})"


class DatasetFormat(Protocol):
    """A layout: how to recognise it and describe the dataset. Volumes of slices (the GI data) are
    read by src.data.preparation; 2D formats are ImageFormats."""

    name: str
    looked_for: str  # what `detect` looks for, named in the unknown-layout error
    marker: str  # the file (relative to the root) that stands for the dataset in the pipeline's stamps; "": the folder
    submission: str  # what a submission of the dataset is (DatasetDescription.submission)

    def detect(self, root: Path) -> bool: ...

    def describe(self, root: Path) -> DatasetDescription: ...


class ImageFormat(DatasetFormat, Protocol):
    """A 2D layout: its samples, and how to decode one. `label_scale` is the pixel value of class 1 in the
    layout's own label files (class k is k * label_scale): 255 for EBHI's 0/255 masks, else 1.

    Every 2D format is a frozen dataclass whose one field, `max_pixels` (the --max-image-pixels cap,
    src.data.layout.MAX_IMAGE_PIXELS by default), caps every file it decodes or reads the header of;
    `src.data.formats.detect_format(..., max_pixels=N)` gives a copy with another cap."""

    label_scale: int
    max_pixels: int

    def samples(self, root: Path, split: str) -> SampleList: ...

    def folder_samples(self, root: Path, folder: Path) -> SampleList:
        """The images of any `folder` (a submission's --images) as unlabelled samples of this layout's files,
        ids their paths relative to `folder` without the ending; `root` is the dataset's folder."""

    def read_image(self, sample: Sample, description: DatasetDescription) -> np.ndarray:
        """(H, W, C) uint8 or uint16, C = description.n_channels."""

    def read_label(self, sample: Sample, description: DatasetDescription) -> np.ndarray:
        """(H, W) uint8 index map: 0 background, k + 1 = description.labels[k]."""


def _ends_with(path: Path, tail: bytes) -> bool:
    with open(path, "rb") as f:
        f.seek(-len(tail), 2)  # from the end
        return f.read() == tail


@contextmanager
def open_image(path: Path, max_pixels: int) -> Iterator[Image.Image]:
    """`path` opened by Pillow, nothing decoded yet, after its header's size is checked: DataError naming
    the file when it is empty or of more than `max_pixels` pixels (src.data.layout.check_pixels).

    Pillow has a decompression-bomb limit of its own (Image.MAX_IMAGE_PIXELS: a warning above it, an
    error above twice it, both on opening); it is raised to `max_pixels` when below it (never lowered),
    so that the cap the user gives is the one that counts, and an image Pillow refuses is over the cap."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: image over the cap of {max_pixels} pixels (raise it with --max-image-pixels; "
                        f"{exc})") from None
    with image:
        check_pixels(path, image.width, image.height, max_pixels)
        yield image


def image_size(path: str | Path, max_pixels: int) -> tuple[int, int]:
    """(height, width) from an image file's header, nothing decoded; DataError naming the file when it is
    unreadable or of more than `max_pixels` pixels."""
    try:
        with open_image(Path(path), max_pixels) as image:
            width, height = image.size
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None
    return height, width


def read_image_file(path: str | Path, max_pixels: int) -> np.ndarray:
    """Decode one PNG, JPEG, TIFF, GIF or BMP as (H, W) or (H, W, C) without alpha; DataError naming the
    file when it is unreadable, truncated (a PNG must end with its IEND chunk), or of more than `max_pixels`
    pixels (checked on the header, before decoding: open_image). A palette image (Carvana's GIF masks) is
    returned as its palette indices."""
    path = Path(path)
    try:
        with open_image(path, max_pixels) as image:
            image.load()
            array = np.asarray(image)
            if image.format == "PNG" and not _ends_with(path, PNG_END):  # PIL decodes a PNG cut after its pixels
                raise OSError("no IEND chunk at the end")
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({type(exc).__name__}: {exc})") from None
    if array.ndim == 3 and array.shape[2] in (2, 4):  # gray + alpha, RGBA: the alpha is dropped
        array = array[..., :-1]
    return array

"""Checks on decoded pixels that the formats share: an image's channels and dtype, a label's index map,
and a label's size against its image. Pixels are read by base.read_image_file only."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from src.core.errors import DataError
from src.data.formats.base import image_size, read_image_file

IMAGE_DTYPES = (np.uint8, np.uint16)


def check_same_size(path: Path, shape: tuple[int, ...], ref_path: Path, ref_shape: tuple[int, ...]) -> None:
    """DataError naming both files unless `path` has the height and width of `ref_path`."""
    if shape[:2] != ref_shape[:2]:
        raise DataError(f"{path}: {shape[0]}x{shape[1]} (HxW) pixels but {ref_path} has "
                        f"{ref_shape[0]}x{ref_shape[1]}")


def read_channels(path: Path, n_channels: int, max_pixels: int) -> np.ndarray:
    """One image file as (H, W, n_channels) uint8 or uint16 (a gray one as (H, W, 1)); DataError naming the
    file when it has another channel count or dtype."""
    array = read_image_file(path, max_pixels)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] != n_channels:
        raise DataError(f"{path}: image of {array.shape[2]} channel(s), expected {n_channels}")
    if array.dtype not in IMAGE_DTYPES:
        raise DataError(f"{path}: image of dtype {array.dtype}, expected uint8 or uint16")
    return array


def read_label_map(label_path: Path, image_path: Path, n_classes: int, max_pixels: int, *,
                   equal_rgb: bool = False, foreground_255: bool = False) -> np.ndarray:
    """The label image `label_path` as an (H, W) uint8 index map 0..n_classes of `image_path`'s size.

    A DataError naming the label when it is not single-channel ("an RGB label where a map is expected"),
    has values outside 0..n_classes (naming them), or differs in size from its image (naming both; the
    image's size is read from its header). Two leniencies for downloads that save masks otherwise:
    `equal_rgb` reads an RGB label whose three channels are equal as gray, `foreground_255` reads a
    binary mask (n_classes 1) of 0/255 as 0/1.
    """
    array = read_image_file(label_path, max_pixels)
    if array.ndim == 3:
        if not (equal_rgb and (array == array[..., :1]).all()):
            raise DataError(f"{label_path}: an RGB label where a map is expected ({array.shape[2]} channels"
                            f"{', not all equal' if equal_rgb else ''})")
        array = array[..., 0]
    found = np.unique(array)
    if foreground_255 and np.isin(found, (0, 255)).all():
        array = array == 255
    else:
        bad = found[~np.isin(found, np.arange(n_classes + 1))]
        if bad.size:
            shown = ", ".join(str(v) for v in bad[:5].tolist()) + (", ..." if bad.size > 5 else "")
            accepted = f"0..{n_classes}" + (" (or 0/255)" if foreground_255 else "")
            raise DataError(f"{label_path}: label values {shown} outside {accepted}")
    check_same_size(label_path, array.shape, image_path, image_size(image_path, max_pixels))
    return array.astype(np.uint8)

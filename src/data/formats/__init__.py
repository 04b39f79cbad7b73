"""Dataset formats by name: each module of FORMAT_MODULES defines `FORMAT`, a DatasetFormat
(src.data.formats.base). `detect_format` finds the one whose layout a folder has, a 2D one reading with
the --max-image-pixels cap it is given."""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

from src.core.errors import DataError
from src.data.formats.base import DatasetFormat
from src.data.layout import MAX_IMAGE_PIXELS, check_max_pixels

FORMAT_MODULES = ("gi", "carvana", "ebhi", "nnunet")  # detection order: the most specific layout first


def formats() -> dict[str, DatasetFormat]:
    """Every known format by name, in detection order."""
    found = {}
    for module in FORMAT_MODULES:
        fmt = importlib.import_module(f"src.data.formats.{module}").FORMAT
        found[fmt.name] = fmt
    return found


def get_format(name: str) -> DatasetFormat:
    known = formats()
    if name not in known:
        raise DataError(f"unknown dataset format {name!r} (known: {', '.join(known)})")
    return known[name]


def with_max_pixels(fmt: DatasetFormat, max_pixels: int) -> DatasetFormat:
    """`fmt` with the --max-image-pixels cap `max_pixels` (DataError below 1 pixel): a 2D format (an
    ImageFormat, a frozen dataclass of the one field `max_pixels`) as a copy that caps every decode and
    header read with it; the GI format as it is (its slices are capped by src.data.layout.scan_split's
    own argument)."""
    check_max_pixels(max_pixels)
    return dataclasses.replace(fmt, max_pixels=max_pixels) if hasattr(fmt, "max_pixels") else fmt


def detect_format(root: str | Path, forced: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> DatasetFormat:
    """The format of the data folder `root` (or `forced`, checked against the folder), with the cap
    `max_pixels` (with_max_pixels); a one-line DataError listing the known formats and what each looks for
    when none matches."""
    check_max_pixels(max_pixels)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    if forced is not None:
        fmt = get_format(forced)
        if not fmt.detect(root):
            raise DataError(f"{root}: not in the {fmt.name} layout (looked for {fmt.looked_for})")
        return with_max_pixels(fmt, max_pixels)
    for fmt in formats().values():
        if fmt.detect(root):
            return with_max_pixels(fmt, max_pixels)
    looked = "; ".join(f"{f.name}: {f.looked_for}" for f in formats().values())
    raise DataError(f"{root}: unknown dataset layout (known formats: {looked})")

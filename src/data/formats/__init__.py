"""Dataset formats by name: each module of FORMAT_MODULES defines `FORMAT`, a DatasetFormat
(src.data.formats.base). `detect_format` finds the one whose layout a folder has."""
from __future__ import annotations

import importlib
from pathlib import Path

from src.core.errors import DataError
from src.data.formats.base import DatasetFormat

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


def detect_format(root: str | Path, forced: str | None = None) -> DatasetFormat:
    """The format of the data folder `root` (or `forced`, checked against the folder); a one-line
    DataError listing the known formats and what each looks for when none matches."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    if forced is not None:
        fmt = get_format(forced)
        if not fmt.detect(root):
            raise DataError(f"{root}: not in the {fmt.name} layout (looked for {fmt.looked_for})")
        return fmt
    for fmt in formats().values():
        if fmt.detect(root):
            return fmt
    looked = "; ".join(f"{f.name}: {f.looked_for}" for f in formats().values())
    raise DataError(f"{root}: unknown dataset layout (known formats: {looked})")

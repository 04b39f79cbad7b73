"""Synthetic 2D datasets in the real layouts of Carvana, EBHI-Seg and nnU-Net v2 (raw), small enough for
tests and learnable by a small UNet; and `generate_dataset`, the one entry to every generator.

shapes: seeded generators, outlines and textures; common: the summary, option checks and image files;
carvana, ebhi, nnunet: one generator each. Every image is drawn from a generator seeded by (seed, its
index), so the bytes depend on the options only.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from src.core.errors import DataError
from src.data.synthetic import generate as generate_gi
from src.data.synthetic2d import carvana, ebhi, nnunet
from src.data.synthetic2d.common import Summary2D

GENERATORS = {"gi": generate_gi, "carvana": carvana.generate, "ebhi": ebhi.generate, "nnunet": nnunet.generate}


def check_options(format: str, options: dict) -> None:
    """DataError unless `format` has a generator taking every option of `options` (named as flags)."""
    if format not in GENERATORS:
        raise DataError(f"--format {format!r}: not one of {', '.join(GENERATORS)}")
    takes = [name for name in inspect.signature(GENERATORS[format]).parameters if name != "out_dir"]
    wrong = [name for name in options if name not in takes]
    if wrong:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in wrong)
        raise DataError(f"{flags} does not apply to --format {format} "
                        f"(it takes {', '.join('--' + name.replace('_', '-') for name in takes)})")


def generate_dataset(format: str, out_dir: str | Path, **options):
    """Write a synthetic dataset of `format` (gi: the GI tract slices of src.data.synthetic) under `out_dir`;
    its summary (with a `line()`). An option the format does not take is a DataError naming it."""
    check_options(format, options)
    return GENERATORS[format](out_dir, **options)


__all__ = ["GENERATORS", "Summary2D", "check_options", "generate_dataset"]

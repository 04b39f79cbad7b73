"""What the 2D dataset tests share: fault assertions, tiny datasets, a tiny training's flags."""
from __future__ import annotations

from pathlib import Path

import pytest

from src.core.errors import DataError
from src.data.synthetic2d import generate_dataset

# `python -m src.train` flags of a seconds-long training on a tiny 2D set
TINY_TRAIN = ["--arch", "unet_tiny", "--img-size", "24", "--batch-size", "4", "--epochs", "1", "--workers", "0",
              "--device", "cpu", "--lr", "3e-3"]


def tiny_sets(root: Path, options: dict[str, dict]) -> dict[str, Path]:
    """One synthetic dataset per format of `options` (format -> generator options), `root/<format>`."""
    for fmt, kwargs in options.items():
        generate_dataset(fmt, root / fmt, **kwargs)
    return {fmt: root / fmt for fmt in options}


def fault(func, *args, names: Path | str | list, says: str = "", match: str | None = None) -> str:
    """Call func; expect a one-line DataError naming every path or text of `names`, containing `says`
    and matching the regex `match`; return the message."""
    with pytest.raises(DataError, match=match) as info:
        func(*args)
    message = str(info.value)
    assert "\n" not in message and says in message, message
    for name in names if isinstance(names, list) else [names]:
        assert str(name) in message, (name, message)
    return message

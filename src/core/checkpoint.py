"""Checkpoints: written atomically, read without unpickling anything (`weights_only=True`), so a
crafted file in a copied runs/ folder cannot execute code; a bad file is a one-line error."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from src.core.atomic import atomic_path
from src.core.errors import DataError


def save_checkpoint(obj, target: Path) -> None:
    with atomic_path(target, suffix=".pt") as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint of tensors and plain containers; nothing is unpickled (weights_only=True)."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: checkpoint not found") from None
    except pickle.UnpicklingError:
        raise DataError(f"{path}: not a loadable checkpoint (not a file of tensors and plain "
                        "containers only: refused, nothing was run)") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, ... on truncated or random files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {first[:120]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise DataError(f"{path}: checkpoint has no 'model' entry")
    return ckpt

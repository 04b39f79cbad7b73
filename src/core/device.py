"""The one reading of a --device value, checked against the machine before any work starts."""
from __future__ import annotations

import re

import torch

from src.core.errors import DataError

DEVICE_RE = re.compile(r"^(auto|cpu|cuda|mps)(?::(\d+))?$")
DEVICE_NAMES = "expected auto, cpu, cuda, cuda:<index> or mps"


def is_device_name(name: str) -> bool:
    """`name` is a --device value (whether this machine has the device or not)."""
    match = DEVICE_RE.match(str(name))
    return bool(match) and (match.group(2) is None or match.group(1) == "cuda")


def check_device_name(name: str) -> str:
    """`name` when it is a --device value, else a one-line DataError (the machine is not asked)."""
    if not is_device_name(name):
        raise DataError(f"--device {name}: {DEVICE_NAMES}")
    return name


def select_device(name: str) -> torch.device:
    """The torch device a --device value names: `auto` is CUDA when there is one, else the CPU.
    A value this machine cannot run (no such device, unknown name) is a one-line DataError."""
    kind, index = DEVICE_RE.match(check_device_name(name)).groups()
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise DataError(f"--device {name}: no CUDA device is available")
        if index is not None and int(index) >= count:
            raise DataError(f"--device {name}: no such CUDA device (this machine has {count}: "
                            f"cuda:0 to cuda:{count - 1})")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise DataError(f"--device {name}: no MPS device is available")
    return torch.device(name)

"""Seeding of every random generator the project uses."""
from __future__ import annotations

import random
import sys

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed python, numpy and (if imported) torch; deterministic algorithms stay the caller's choice."""
    random.seed(seed)
    np.random.seed(seed)
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)

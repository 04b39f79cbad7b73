"""A training's progress outside a terminal: one line per epoch (a progress bar needs a terminal)."""
from __future__ import annotations

import sys


def in_terminal() -> bool:
    """Whether progress bars can be drawn (tqdm draws on stderr)."""
    return sys.stderr.isatty()


def epoch_line(epoch: int, epochs: int, loss: float, score: float | None, seconds: float,
               wait_s: float | None = None) -> str:
    """`epoch 3/12: train loss 0.4123, val score 0.7012, 4.2 s/epoch, data wait 12%` (0-based `epoch`)."""
    parts = [f"train loss {loss:.4f}"]
    if score is not None:
        parts.append(f"val score {score:.4f}")
    parts.append(f"{seconds:.1f} s/epoch")
    if wait_s is not None:
        parts.append(f"data wait {wait_s / max(seconds, 1e-9):.0%}")
    return f"epoch {epoch + 1}/{epochs}: " + ", ".join(parts)

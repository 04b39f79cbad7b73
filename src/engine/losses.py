"""Weighted sums of segmentation-models-pytorch losses, written `bce:0.5,dice:0.5`."""
from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn as nn

LOSSES = {
    "bce": lambda: smp.losses.SoftBCEWithLogitsLoss(),
    "dice": lambda: smp.losses.DiceLoss(mode="multilabel", from_logits=True),
    "tversky": lambda: smp.losses.TverskyLoss(mode="multilabel", from_logits=True, alpha=0.5, beta=0.5),
    "focal": lambda: smp.losses.FocalLoss(mode="multilabel"),
    "lovasz": lambda: smp.losses.LovaszLoss(mode="multilabel", from_logits=True),
}


def parse_loss_spec(spec: str) -> list[tuple[str, float]]:
    """`bce:0.5,dice:0.5` -> [("bce", 0.5), ("dice", 0.5)]; ValueError names the bad term."""
    terms = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, weight = part.partition(":")
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r} in {spec!r}; valid: {', '.join(LOSSES)}")
        try:
            terms.append((name, float(weight) if weight else 1.0))
        except ValueError:
            raise ValueError(f"bad weight {weight!r} for loss {name!r}") from None
    if not terms:
        raise ValueError("empty loss specification")
    return terms


class CombinedLoss(nn.Module):
    """sum(weight_i * loss_i(logits, target)) over (N, C, ...) multilabel logits and targets."""

    def __init__(self, spec: str):
        super().__init__()
        terms = parse_loss_spec(spec)
        self.weights = [w for _, w in terms]
        self.terms = nn.ModuleList(LOSSES[name]() for name, _ in terms)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return sum(w * term(logits, target) for w, term in zip(self.weights, self.terms))

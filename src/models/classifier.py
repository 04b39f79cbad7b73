"""Slice classifiers for the empty-slice gate: a timm backbone and a linear head giving per-class
presence logits (N, 3) from the same 2.5D input as the segmenters.

Names are `cls_<encoder>`: r18, r34, effb0-effb7 (timm's tf_efficientnet_b*, the port of the weights
smp's efficientnet-b* encoders use), effv2s, convnext_t/s, and `tiny` (a 0.4M-parameter MobileNetV3
for tests and CPU demos). The backbone sits in `model.encoder` without its ImageNet head, so
`src.models.weights.load_encoder_weights` loads a local timm checkpoint into it (the 1000-class head
of the file is not part of the encoder and is skipped); weights are never downloaded.
"""
from __future__ import annotations

import timm
import torch
import torch.nn as nn

from src.models.registry import register_arch

BACKBONES = {
    "tiny": "mobilenetv3_small_050",
    "r18": "resnet18",
    "r34": "resnet34",
    **{f"effb{i}": f"tf_efficientnet_b{i}" for i in range(8)},
    "effv2s": "tf_efficientnetv2_s",
    "convnext_t": "convnext_tiny",
    "convnext_s": "convnext_small",
}


class SliceClassifier(nn.Module):
    """timm backbone (pooled pre-logits features) -> dropout -> linear: (N, C, H, W) -> (N, classes) logits."""

    def __init__(self, backbone: str, in_channels: int = 3, classes: int = 3, dropout: float = 0.2, **overrides):
        super().__init__()
        self.encoder = timm.create_model(backbone, pretrained=False, in_chans=in_channels, num_classes=0, **overrides)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.encoder.head_hidden_size, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def _register(short: str, backbone: str) -> None:
    @register_arch(f"cls_{short}", "cls", f"timm {backbone} + linear presence head")
    def build(in_channels: int = 3, classes: int = 3, **overrides) -> SliceClassifier:
        return SliceClassifier(backbone, in_channels, classes, **overrides)


for _short, _backbone in BACKBONES.items():
    _register(_short, _backbone)

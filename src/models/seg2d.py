"""2.5D segmenters: segmentation-models-pytorch decoders on smp / timm encoders.

Names are `<decoder>_<encoder>`: decoders unet, unetpp, fpn, upernet; encoders r18, r34,
effb0-effb7, effv2s, convnext_t/s/b, mitb0-mitb2, and `tiny` (a 0.5M-parameter timm MobileNetV3
for tests and CPU demos). Weights are never downloaded: `encoder_weights=None` always, local
weights go through `src.models.weights.load_encoder_weights`.
"""
from __future__ import annotations

import segmentation_models_pytorch as smp

from src.models.registry import register_arch

DECODERS = {"unet": smp.Unet, "unetpp": smp.UnetPlusPlus, "fpn": smp.FPN, "upernet": smp.UPerNet}
ENCODERS = {
    "tiny": "tu-mobilenetv3_small_050",
    "r18": "resnet18",
    "r34": "resnet34",
    **{f"effb{i}": f"efficientnet-b{i}" for i in range(8)},
    "effv2s": "tu-tf_efficientnetv2_s",
    "convnext_t": "tu-convnext_tiny",
    "convnext_s": "tu-convnext_small",
    "convnext_b": "tu-convnext_base",
    **{f"mitb{i}": f"mit_b{i}" for i in range(3)},
}
# UNet++'s nested decoder needs every encoder stage, which mit encoders do not provide.
UNSUPPORTED = {("unetpp", enc) for enc in ENCODERS if enc.startswith("mit")}


def _register(decoder: str, encoder: str) -> None:
    cls, encoder_name = DECODERS[decoder], ENCODERS[encoder]

    @register_arch(f"{decoder}_{encoder}", "seg2d", f"smp.{cls.__name__} on {encoder_name}")
    def build(in_channels: int = 3, classes: int = 3, aux_head: bool = False, **overrides):
        aux = dict(classes=classes, dropout=0.2) if aux_head else None
        return cls(encoder_name=encoder_name, encoder_weights=None, in_channels=in_channels,
                   classes=classes, aux_params=aux, **overrides)


for _dec in DECODERS:
    for _enc in ENCODERS:
        if (_dec, _enc) not in UNSUPPORTED:
            _register(_dec, _enc)

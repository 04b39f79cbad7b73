"""The classic UNet (Ronneberger et al. 2015) in plain torch, with the knobs of the UNet studies.

    create_model("unet_classic", in_channels=5, depth=5, width=64, norm="double_batch", init=True,
                 conv="standard", dropout=0.0, aux_head=False)

- depth: levels of the encoder (the bottleneck included); width: channels of the first level,
  doubled per level. The default 5 / 64 is the original's 64, 128, 256, 512, 1024.
- norm: what follows the convolutions of a double-conv block: `none` (the original), `batch` / `instance`
  (one normalisation, after the block's first convolution), `double_batch` / `double_instance`
  (after each of the two; the default, as most torch UNets do).
- init: True gives Kaiming-normal convolutions (fan_out, ReLU) and unit / zero normalisation
  affines; False keeps torch's default initialisation.
- conv: every 3x3 convolution of the net is `standard`; `dilated2|4|8|16` (dilation d, padding d, same
  receptive-field centre); `pyramid` (parallel 3x3 branches of dilation 1, 2, 4, 8 sharing the output
  channels, concatenated); `separable` (spatially separable: 3x1 then 1x3); `depthwise` (depthwise
  3x3 then pointwise 1x1).
- dropout: Dropout2d with this probability on the bottleneck's output (the original's "drop-out
  layers at the end of the contracting path").
- aux_head: the model returns (logits, presence logits (N, classes)) from a pooled linear head on
  the bottleneck, which the 2.5D stage's `--aux-weight` trains.

Registered names say what they are: `unet_classic`, `unet_classic_dilated4`, `unet_classic_pyramid`,
`unet_classic_separable`, `unet_classic_depthwise`, ... at the original size, the same with `_tiny`
(width 8, depth 4: for tests and CPU studies), and `unet_classic_tiny_<norm>` /
`unet_classic_tiny_noinit` / `unet_classic_tiny_dropout` for ablations through the train CLI (whose
flags cannot reach builder kwargs). Every knob is also a builder kwarg of every name.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.models.registry import register_arch

NORMS = ("none", "batch", "instance", "double_batch", "double_instance")
CONVS = ("standard", "dilated2", "dilated4", "dilated8", "dilated16", "pyramid", "separable", "depthwise")
PYRAMID_DILATIONS = (1, 2, 4, 8)


def conv3x3(cin: int, cout: int, kind: str) -> nn.Module:
    """A 3x3 convolution (shape-preserving) of the given kind."""
    if kind == "standard":
        return nn.Conv2d(cin, cout, 3, padding=1)
    if kind.startswith("dilated"):
        d = int(kind.removeprefix("dilated"))
        return nn.Conv2d(cin, cout, 3, padding=d, dilation=d)
    if kind == "pyramid":
        return PyramidConv(cin, cout)
    if kind == "separable":
        return nn.Sequential(nn.Conv2d(cin, cout, (3, 1), padding=(1, 0)), nn.Conv2d(cout, cout, (1, 3), padding=(0, 1)))
    if kind == "depthwise":
        return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin), nn.Conv2d(cin, cout, 1))
    raise ValueError(f"unknown conv {kind!r}; valid: {', '.join(CONVS)}")


class PyramidConv(nn.Module):
    """Parallel dilated 3x3 branches (1, 2, 4, 8) whose outputs, concatenated, make `cout` channels."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        n = len(PYRAMID_DILATIONS)
        sizes = [cout // n + (1 if i < cout % n else 0) for i in range(n)]
        self.branches = nn.ModuleList(nn.Conv2d(cin, s, 3, padding=d, dilation=d)
                                      for s, d in zip(sizes, PYRAMID_DILATIONS) if s > 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind.endswith("batch"):
        return nn.BatchNorm2d(channels)
    if kind.endswith("instance"):
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class DoubleConv(nn.Module):
    """conv -> [norm] -> ReLU -> conv -> [norm] -> ReLU; which norms exist is set by `norm`."""

    def __init__(self, cin: int, cout: int, norm: str, conv: str):
        super().__init__()
        first = norm != "none"
        second = norm.startswith("double_")
        self.conv1 = conv3x3(cin, cout, conv)
        self.norm1 = _norm(norm, cout) if first else nn.Identity()
        self.conv2 = conv3x3(cout, cout, conv)
        self.norm2 = _norm(norm, cout) if second else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(x)))


class UpBlock(nn.Module):
    """2x2 transposed convolution (halving the channels), concatenation with the skip, DoubleConv."""

    def __init__(self, cin: int, cout: int, norm: str, conv: str):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.block = DoubleConv(cout * 2, cout, norm, conv)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if dy or dx:  # odd sizes: pad the upsampled map to the skip's size
            x = F.pad(x, (dx // 2, dx - dx // 2, dy // 2, dy - dy // 2))
        return self.block(torch.cat([skip, x], dim=1))


class UNetClassic(nn.Module):
    def __init__(self, in_channels: int = 3, classes: int = 3, depth: int = 5, width: int = 64,
                 norm: str = "double_batch", init: bool = True, conv: str = "standard", dropout: float = 0.0,
                 aux_head: bool = False):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
        if conv not in CONVS:
            raise ValueError(f"unknown conv {conv!r}; valid: {', '.join(CONVS)}")
        if depth < 2 or width < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"bad UNet size: depth={depth} (>= 2) width={width} (>= 1) dropout={dropout} (in [0, 1))")
        self.config = dict(depth=depth, width=width, norm=norm, init=init, conv=conv, dropout=dropout)
        widths = [width * 2 ** i for i in range(depth)]
        self.encoders = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.encoders.append(DoubleConv(cin, w, norm, conv))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], norm, conv)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.decoders = nn.ModuleList(UpBlock(widths[i + 1], widths[i], norm, conv) for i in reversed(range(depth - 1)))
        self.head = nn.Conv2d(widths[0], classes, 1)
        self.presence = (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(widths[-1], classes))
                         if aux_head else None)
        if init:
            self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def conv_blocks(self) -> dict[str, nn.Module]:
        """The convolution blocks by name, in data order (what pruning studies prune one at a time)."""
        blocks = {f"enc{i}": m for i, m in enumerate(self.encoders)}
        blocks["bottleneck"] = self.bottleneck
        blocks.update({f"dec{len(self.decoders) - 1 - i}": m for i, m in enumerate(self.decoders)})
        blocks["head"] = self.head
        return blocks

    def forward(self, x: torch.Tensor):
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottleneck(x))
        bottom = x
        for dec, skip in zip(self.decoders, reversed(skips)):
            x = dec(x, skip)
        logits = self.head(x)
        if self.presence is not None:
            return logits, self.presence(bottom)
        return logits


SIZES = {"": dict(depth=5, width=64), "_tiny": dict(depth=4, width=8)}
TINY_ABLATIONS = {  # unet_classic_tiny_<suffix>: one knob changed from the tiny default
    "nonorm": dict(norm="none"), "batch": dict(norm="batch"), "instance": dict(norm="instance"),
    "dbatch": dict(norm="double_batch"), "dinstance": dict(norm="double_instance"),
    "noinit": dict(init=False), "dropout": dict(dropout=0.3),
}


def _register(name: str, description: str, defaults: dict) -> None:
    @register_arch(name, "seg2d", description)
    def build(in_channels: int = 3, classes: int = 3, aux_head: bool = False, **overrides):
        return UNetClassic(in_channels=in_channels, classes=classes, aux_head=aux_head, **{**defaults, **overrides})


def _describe(values: dict) -> str:
    return ("classic UNet: " + ", ".join(f"{k}={values[k]}" for k in ("depth", "width", "conv", "norm"))
            + ("" if values.get("init", True) else ", no init") + (f", dropout={values['dropout']}" if values.get("dropout") else ""))


def _register_all() -> None:
    for size, dims in SIZES.items():
        for conv in CONVS:
            stem = "unet_classic" if conv == "standard" else f"unet_classic_{conv}"
            values = dict(dims, conv=conv)
            _register(stem + size, _describe({**values, "norm": "double_batch"}), values)
    for suffix, change in TINY_ABLATIONS.items():
        values = dict(SIZES["_tiny"], **change)
        _register(f"unet_classic_tiny_{suffix}", _describe({"norm": "double_batch", "conv": "standard", **values}), values)


_register_all()

"""Run configs: one frozen dataclass per stage, saved as config.json next to the weights.

The train CLI builds its flags from the fields (`img_size` -> `--img-size`), so a field added here
is a flag everywhere, and a saved config can be replayed exactly.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    """Fields shared by every trained stage."""

    stage: str = "seg2d"
    arch: str = "unet_r18"
    fold: str = "0"  # a fold number, or "all" to fit on every case-day (no validation)
    data_dir: str = "data/synthetic"
    cache_dir: str = ""  # default: src.data.volumes.default_cache_dir(data_dir)
    folds_csv: str = "folds/folds.csv"
    out: str = "runs"
    name: str = ""  # run name; default: the arch
    exclude: str = ""  # comma-separated case-days left out of training and validation
    epochs: int = 10
    samples_per_epoch: int = 0  # a fresh random subset of this many samples each epoch; 0 = all
    batch_size: int = 16
    accum_steps: int = 1
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # cosine | poly
    loss: str = "bce:0.5,dice:0.5"
    ema: float = 0.0  # EMA decay of the weights; 0 disables
    amp: bool = True  # mixed precision (CUDA only)
    channels_last: bool = False
    device: str = "auto"  # auto | cpu | cuda
    workers: int = 2
    seed: int = 42
    patience: int = 0  # early stopping after this many epochs without improvement; 0 disables
    threshold: float = 0.5  # pixel threshold of the validation metric
    encoder_weights: str = ""  # local .safetensors/.pth of the encoder; never downloaded
    # > 0 sets the momentum of every BatchNorm; 0 keeps the architecture's. smp's efficientnet-b* and
    # timm's tf_efficientnet_b* use 0.01, whose running statistics lag the weights in a short run
    # from scratch (0.1 is torch's default).
    bn_momentum: float = 0.0

    @property
    def run_name(self) -> str:
        return self.name or self.arch

    @property
    def excluded(self) -> tuple[str, ...]:
        return tuple(x for x in (s.strip() for s in self.exclude.split(",")) if x)


@dataclass(frozen=True)
class Seg2DConfig(TrainConfig):
    """2.5D segmentation (and the slice classifier, which shares its inputs)."""

    channels: int = 3
    stride: int = 2
    anchor: str = "center"  # center: i-s, i, i+s; start: i, i+s, i+2s
    img_size: int = 256
    geometry: str = "resize"  # resize | letterbox
    augment: str = "light"  # none | light | strong
    positive_only: bool = False  # train on annotated slices only
    tail_drop: int = 0  # drop the N slices after the last annotated one from the loss
    aux_weight: float = 0.0  # > 0 adds a per-class presence head on the encoder, with this loss weight


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One `--kebab-case` flag per field; defaults left as None so only given flags override."""
    for field in dataclasses.fields(config_cls):
        flag = "--" + field.name.replace("_", "-")
        if field.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(default: {field.default})")
        else:
            kind = {"int": int, "float": float}.get(str(field.type), str)
            parser.add_argument(flag, type=kind, default=None, help=f"(default: {field.default})")


def config_from_args(config_cls: type, args: argparse.Namespace, base: dict[str, Any] | None = None):
    """Build a config from defaults, then `base` (e.g. a recipe), then the flags that were given."""
    values = dict(base or {})
    for field in dataclasses.fields(config_cls):
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = given
    return config_cls(**values)

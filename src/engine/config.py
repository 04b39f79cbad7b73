"""Run configs of every trained stage, in one place: one frozen dataclass per stage, validated in
`__post_init__` (a bad value is a one-line DataError naming its flag), saved as config.json next to
the weights.

The train CLI builds its flags from the fields (`img_size` -> `--img-size`), so a field added here
is a flag everywhere, and a saved config can be replayed exactly.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from src.core.device import DEVICE_NAMES, is_device_name
from src.core.errors import DataError
from src.core.options import add_arguments, from_args
from src.core.outputs import check_name
from src.data.augment import PRESETS as AUGMENTS
from src.data.geometry import MODES as GEOMETRIES
from src.data.samples import ANCHORS
from src.engine.losses import parse_loss_spec

SCHEDULES = ("cosine", "poly")
OPTIMIZERS = ("adamw", "adam", "sgd")
MAX_IMG_SIZE = 4096  # --img-size above this is a typo, not a model (a batch of it would not fit in memory)


@dataclass(frozen=True)
class TrainConfig:
    """Fields shared by every trained stage."""

    stage: str = "seg2d"
    arch: str = "unet_r18"
    fold: str = field(default="0", metadata={
        "help": "a fold number, or 'all' to fit on every case-day (no validation)"})
    data_dir: str = "data/synthetic"
    cache_dir: str = field(default="", metadata={"help": "default: src.data.volumes.default_cache_dir(data_dir)"})
    folds_csv: str = "folds/folds.csv"
    out: str = "runs"
    name: str = field(default="", metadata={"help": "run name; default: the arch"})
    exclude: str = field(default="", metadata={"help": "comma-separated case-days (2D data: image ids, as make_folds --exclude) left out of training and validation"})
    epochs: int = 10
    samples_per_epoch: int = field(default=0, metadata={
        "help": "a fresh random subset of this many samples each epoch; 0 = all"})
    batch_size: int = 16
    accum_steps: int = 1
    lr: float = 1e-3
    weight_decay: float = 1e-2
    optimizer: str = field(default="adamw", metadata={"help": "adamw | adam | sgd (momentum 0.9, Nesterov)"})
    warmup_epochs: float = 1.0
    schedule: str = field(default="cosine", metadata={"help": "cosine | poly"})
    loss: str = "bce:0.5,dice:0.5"
    ema: float = field(default=0.0, metadata={"help": "EMA decay of the weights; 0 disables"})
    amp: bool = field(default=True, metadata={"help": "mixed precision (CUDA only)"})
    channels_last: bool = False
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    workers: int = 2
    seed: int = 42
    patience: int = field(default=0, metadata={
        "help": "early stopping after this many validations without improvement; 0 disables"})
    # validating a fold costs about as much as an epoch of a CPU demo, and with a decaying learning
    # rate the late epochs are the ones that win
    val_every: int = field(default=1, metadata={"help": "validate every N epochs (and always after the last)"})
    threshold: float = field(default=0.5, metadata={"help": "pixel threshold of the validation metric"})
    encoder_weights: str = field(default="", metadata={
        "help": "local .safetensors/.pth of the encoder; never downloaded"})
    # smp's efficientnet-b* and timm's tf_efficientnet_b* use 0.01, whose running statistics lag the
    # weights in a short run from scratch (0.1 is torch's default)
    bn_momentum: float = field(default=0.0, metadata={
        "help": "> 0 sets the momentum of every BatchNorm; 0 keeps the architecture's"})

    def __post_init__(self):
        _check_types(self)
        _check(self, str(self.fold) == "all" or str(self.fold).isdigit(), "fold", "expected a fold number or 'all'")
        for name in ("epochs", "batch_size", "accum_steps", "val_every"):
            _check(self, getattr(self, name) >= 1, name, "must be at least 1")
        for name in ("samples_per_epoch", "workers", "patience"):
            _check(self, getattr(self, name) >= 0, name, "must be >= 0")
        _check(self, math.isfinite(self.lr) and self.lr > 0, "lr", "must be a positive number")
        for name in ("weight_decay", "warmup_epochs"):
            _check(self, math.isfinite(getattr(self, name)) and getattr(self, name) >= 0, name, "must be a number >= 0")
        _check(self, self.schedule in SCHEDULES, "schedule", f"expected one of {', '.join(SCHEDULES)}")
        _check(self, self.optimizer in OPTIMIZERS, "optimizer", f"expected one of {', '.join(OPTIMIZERS)}")
        _check(self, is_device_name(self.device), "device", DEVICE_NAMES)
        _check(self, 0 <= self.ema < 1, "ema", "expected a decay in [0, 1)")
        _check(self, 0 < self.threshold < 1, "threshold", "expected a probability in (0, 1)")
        _check(self, 0 <= self.bn_momentum <= 1, "bn_momentum", "expected a momentum in [0, 1]")
        _check(self, bool(self.arch), "arch", "must name an architecture")
        check_name(self.run_name, "--name" if self.name else "--arch")
        try:
            parse_loss_spec(self.loss)
        except ValueError as exc:
            _check(self, False, "loss", str(exc))

    @property
    def run_name(self) -> str:
        return self.name or self.arch

    @property
    def excluded(self) -> tuple[str, ...]:
        return tuple(x for x in (s.strip() for s in self.exclude.split(",")) if x)


@dataclass(frozen=True)
class Seg2DConfig(TrainConfig):
    """2.5D segmentation (and the slice classifier, which shares its inputs); on 2D images, the fields
    but SLICE_FIELDS (src.engine.image2d)."""

    channels: int = 3
    stride: int = 2
    anchor: str = field(default="center", metadata={"help": "center: i-s, i, i+s; start: i, i+s, i+2s"})
    img_size: int = 256
    geometry: str = field(default="resize", metadata={"help": "resize | letterbox"})
    augment: str = field(default="light", metadata={"help": "none | light | strong"})
    positive_only: bool = field(default=False, metadata={"help": "train on annotated slices only"})
    balanced: bool = field(default=False, metadata={
        "help": "class-balanced sampling: organ-positive and empty slices drawn equally often"})
    tail_drop: int = field(default=0, metadata={"help": "drop the N slices after the last annotated one from the loss"})
    aux_weight: float = field(default=0.0, metadata={
        "help": "> 0 adds a per-class presence head on the encoder, with this loss weight"})

    def __post_init__(self):
        super().__post_init__()
        for name in ("channels", "stride"):
            _check(self, getattr(self, name) >= 1, name, "must be at least 1")
        _check_img_size(self)
        _check(self, self.anchor in ANCHORS, "anchor", f"expected one of {', '.join(ANCHORS)}")
        _check(self, self.geometry in GEOMETRIES, "geometry", f"expected one of {', '.join(GEOMETRIES)}")
        _check(self, self.augment in AUGMENTS, "augment", f"expected one of {', '.join(AUGMENTS)}")
        _check(self, self.tail_drop >= 0, "tail_drop", "must be >= 0")
        _check(self, math.isfinite(self.aux_weight) and self.aux_weight >= 0, "aux_weight", "must be a number >= 0")


# Seg2DConfig fields about neighbouring slices: on a dataset of 2D images, setting one is an error.
SLICE_FIELDS = ("channels", "stride", "anchor", "positive_only", "balanced", "tail_drop", "aux_weight")


@dataclass(frozen=True)
class ClsConfig(Seg2DConfig):
    """The slice classifier: the 2.5D input fields of Seg2DConfig, a cls_* arch, BCE."""

    stage: str = "cls"
    arch: str = "cls_effb0"
    loss: str = "bce"

    def __post_init__(self):
        super().__post_init__()
        if self.positive_only or self.aux_weight:
            raise DataError("config: --positive-only and --aux-weight do not apply to a classifier")


@dataclass(frozen=True)
class Seg3DConfig(TrainConfig):
    """3D segmentation; rois are H,W,D like the 1st place's 160x160x80 crops."""

    stage: str = "seg3d"
    arch: str = "segresnet3d"
    batch_size: int = 2
    roi: str = field(default="160,160,80", metadata={"help": "training crop H,W,D (patch-wise archs use D = slab)"})
    sw_roi: str = field(default="", metadata={"help": "H,W,D of the inference window; default: roi"})
    sw_overlap: float = field(default=0.5, metadata={"help": "sliding-window overlap (the 1st place used 0.7)"})
    sw_batch_size: int = 2
    samples_per_volume: int = field(default=4, metadata={"help": "crops per case-day and epoch"})
    pos_ratio: float = field(default=0.67, metadata={"help": "share of crops centred on a labelled voxel"})
    augment3d: str = field(default="default", metadata={"help": "none | default"})
    slab: int = field(default=16, metadata={"help": "slices per slab of the patch-wise nets"})
    cascade_scale: int = field(default=4, metadata={"help": "the cascade's stage-1 downsampling factor (every axis)"})

    def __post_init__(self):
        super().__post_init__()
        _check(self, 0 <= self.sw_overlap < 1, "sw_overlap", "expected 0 <= overlap < 1")
        _check(self, 0 <= self.pos_ratio <= 1, "pos_ratio", "expected a share in [0, 1]")
        for name in ("sw_batch_size", "samples_per_volume", "slab", "cascade_scale"):
            _check(self, getattr(self, name) >= 1, name, "must be at least 1")
        _check(self, not self.channels_last, "channels_last", "is for 2D nets; 3D nets keep the default layout")
        _check(self, not self.encoder_weights, "encoder_weights", "the 3D nets have no pretrained encoder")


# TrainConfig fields the YOLO trainer has no use for: setting one is an error, not silently ignored.
DET_UNUSED_FIELDS = ("loss", "optimizer", "ema", "accum_steps", "samples_per_epoch", "channels_last", "encoder_weights",
                     "threshold", "schedule", "amp", "bn_momentum", "val_every")


@dataclass(frozen=True)
class DetConfig(TrainConfig):
    """The crop detector. lr, weight_decay, warmup_epochs, patience (0: off), batch_size, epochs,
    seed and workers go to ultralytics (AdamW, cosine decay); amp stays off."""

    stage: str = "det"
    arch: str = "yolo26n"
    epochs: int = 30
    batch_size: int = 16
    weight_decay: float = 5e-4
    amp: bool = False
    img_size: int = field(default=256, metadata={"help": "YOLO's imgsz (a multiple of 32)"})
    stride: int = field(default=2, metadata={
        "help": "channels are slices z-s, z, z+s; 0: the slice itself three times"})
    slice_step: int = field(default=1, metadata={"help": "export every k-th slice of the case-days"})
    predict_step: int = field(default=1, metadata={"help": "detect on every k-th slice of a case-day"})
    conf: float = field(default=0.25, metadata={"help": "detection confidence kept"})
    margin: float = field(default=0.1, metadata={
        "help": "crop margin on each side, as a fraction of the box's size ..."})
    margin_px: int = field(default=4, metadata={"help": "... plus this many pixels"})
    mosaic: float = field(default=1.0, metadata={"help": "ultralytics' mosaic augmentation probability"})
    keep_dataset: bool = field(default=False, metadata={"help": "keep the exported YOLO dataset after training"})

    def __post_init__(self):
        super().__post_init__()
        changed = changed_fields(self, DET_UNUSED_FIELDS)
        if changed:
            raise DataError(f"--{changed[0].replace('_', '-')} does not apply to the det stage")
        _check_img_size(self)
        _check(self, self.img_size % 32 == 0, "img_size", "YOLO needs a positive multiple of 32")
        for name in ("stride", "margin", "margin_px"):
            _check(self, getattr(self, name) >= 0, name, "must be >= 0")
        for name in ("slice_step", "predict_step"):
            _check(self, getattr(self, name) >= 1, name, "must be at least 1")
        _check(self, 0 < self.conf < 1, "conf", "expected a confidence in (0, 1)")


def changed_fields(config, names: tuple[str, ...]) -> list[str]:
    """Those of the fields `names` whose value differs from their default in the config's class."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    return [name for name in names if getattr(config, name) != defaults[name]]


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _check_types(config) -> None:
    """Every field holds its declared type (a saved config.json or a recipe can hold anything)."""
    for f in dataclasses.fields(config):
        value, kinds = getattr(config, f.name), _TYPES[str(f.type)]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise DataError(f"--{f.name.replace('_', '-')} {value!r}: expected {f.type}")


def _check_img_size(config) -> None:
    _check(config, 1 <= config.img_size <= MAX_IMG_SIZE, "img_size", f"must be between 1 and {MAX_IMG_SIZE}")


def _check(config, ok: bool, name: str, what: str) -> None:
    """A failed check is a one-line error naming the flag and its value."""
    if not ok:
        raise DataError(f"--{name.replace('_', '-')} {getattr(config, name)!r}: {what}")


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """The train CLI's flags: one per field (src.core.options), None unless given, so only the flags
    given override a base."""
    add_arguments(parser, config_cls, given_only=True)


def config_from_args(config_cls: type, args: argparse.Namespace, base: dict[str, Any] | None = None):
    """Build a config from defaults, then `base` (e.g. a recipe), then the flags that were given."""
    return from_args(config_cls, args, base)

"""YOLO crop detectors (ultralytics), built from the yaml files ultralytics ships, never from .pt weights.

`ultralytics_offline()` is the only way this project imports ultralytics: it sets YOLO_OFFLINE,
YOLO_AUTOINSTALL=false and YOLO_CONFIG_DIR (default `.yolo/` in the working directory, gitignored)
before the import, turns off the settings' analytics sync and logger integrations, and puts matplotlib's DejaVuSans at
<config dir>/Arial.ttf and Arial.Unicode.ttf, the fonts ultralytics would otherwise fetch before
every training. Archs: yolo26n/s/m, yolo11n/s, yolov8n/s (`ultralytics.nn.tasks.DetectionModel`).
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

import matplotlib
import torch
import torch.nn as nn

from src.core.atomic import atomic_path
from src.models.registry import register_arch

YOLO_ARCHS = ("yolo26n", "yolo26s", "yolo26m", "yolo11n", "yolo11s", "yolov8n", "yolov8s")
FONTS = ("Arial.ttf", "Arial.Unicode.ttf")
# analytics sync and every logger integration (some send data when their package is installed)
OFF_SETTINGS = ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb")


@functools.cache
def ultralytics_offline():
    """Import and return the `ultralytics` package configured to never touch the network."""
    already = "ultralytics" in sys.modules
    os.environ["YOLO_OFFLINE"] = "true"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(".yolo").resolve()))
    Path(os.environ["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)
    omp = os.environ.get("OMP_NUM_THREADS")
    import ultralytics
    from ultralytics.utils import ONLINE, SETTINGS, USER_CONFIG_DIR

    if omp is None:  # its import sets OMP_NUM_THREADS=1, which every later child process would inherit
        os.environ.pop("OMP_NUM_THREADS", None)

    if already and ONLINE:
        raise RuntimeError("ultralytics was imported before src.models.detector.ultralytics_offline() (it may go online)")
    quiet = {key: False for key in OFF_SETTINGS}
    if any(SETTINGS.get(key) for key in OFF_SETTINGS):
        SETTINGS.update(quiet)
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in FONTS:
        if not (USER_CONFIG_DIR / name).exists():
            with atomic_path(USER_CONFIG_DIR / name, suffix=".ttf") as tmp:
                shutil.copyfile(font, tmp)
    return ultralytics


@contextlib.contextmanager
def keep_torch_state() -> Iterator[None]:
    """Undo what ultralytics changes in the process: torch's thread count (its CPU device selection
    sets cores - 1) and deterministic mode (its seeding turns it on)."""
    threads, cudnn = torch.get_num_threads(), torch.backends.cudnn.deterministic
    deterministic, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn


def yolo_yaml(arch: str) -> str:
    """The ultralytics model yaml of an arch name (the scale letter picks the width and depth)."""
    return f"{arch}.yaml"


def _register(arch: str) -> None:
    @register_arch(arch, "det", f"ultralytics {yolo_yaml(arch)} detector (built from yaml, no download)")
    def build(classes: int = 2, in_channels: int = 3, **overrides) -> nn.Module:
        ultralytics_offline()
        from ultralytics.nn.tasks import DetectionModel, yaml_model_load

        spec = {**yaml_model_load(yolo_yaml(arch)), "nc": classes}  # nc set here: no "overriding nc" message
        return DetectionModel(spec, ch=in_channels, verbose=False, **overrides)


for _arch in YOLO_ARCHS:
    _register(_arch)

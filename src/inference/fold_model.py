"""A trained fold rebuilt for prediction: its stage's config and task from config.json, its weights
from best.pt (loaded with weights_only=True).

On CUDA a fold predicts under fp16 autocast by default (its config's `amp`, True unless trained
without; `amp` overrides it), and with `offload` its weights wait in CPU memory between predictions,
so an ensemble of many folds holds one fold's weights and activations on the GPU at a time."""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from src.core.artifacts import Prediction
from src.core.checkpoint import load_checkpoint
from src.core.errors import DataError
from src.data.image_samples import ImageInput
from src.data.volumes import CaseDay
from src.engine.stages import check_arch, get_stage
from src.engine.trainer import Task
from src.inference.runs import TrainedFold

ModelInput = CaseDay | ImageInput  # a case-day volume, or one 2D image (its (K, H, W) probabilities)


def build_config(info: TrainedFold):
    """The fold's config dataclass, rebuilt from config.json by its stage's config class."""
    config_cls = get_stage(info.stage).config
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(info.record.config) - known)
    if unknown:
        raise DataError(f"{info.dir.config_path}: field(s) {', '.join(unknown)} unknown to {config_cls.__name__}")
    try:
        return config_cls(**info.record.config)
    except DataError as exc:
        raise DataError(f"{info.dir.config_path}: {exc}") from None
    except TypeError as exc:
        raise DataError(f"{info.dir.config_path}: bad config ({exc})") from None


@dataclass
class FoldModel:
    """A loaded fold model and the task that feeds it whole case-days, or 2D images."""

    info: TrainedFold
    task: Task
    model: nn.Module
    device: torch.device
    amp: bool | None = None  # fp16 autocast on CUDA; None: the config's amp (default True)
    offload: bool = False  # weights on the CPU between predictions (frees accelerator memory)

    @classmethod
    def load(cls, info: TrainedFold, device: torch.device, cache_dir: Path, amp: bool | None = None,
             offload: bool = False) -> FoldModel:
        cfg = build_config(info)
        check_arch(info.stage, cfg.arch)
        task = get_stage(info.stage).task(cfg, cache_dir)
        model = task.build_model()
        state = load_checkpoint(info.dir.weights)["model"]
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise DataError(f"{info.dir.weights}: weights do not fit the config's model "
                            f"({str(exc).strip().splitlines()[0][:200]})") from None
        offload = offload and device.type != "cpu"
        model.to(torch.device("cpu") if offload else device).eval()
        if getattr(cfg, "channels_last", False):
            model = model.to(memory_format=torch.channels_last)
        return cls(info, task, model, device, amp, offload)

    @property
    def autocast(self) -> bool:
        """Whether predictions run under fp16 autocast: on CUDA only, by `amp` or else the config's."""
        wanted = getattr(self.task.cfg, "amp", True) if self.amp is None else self.amp
        return self.device.type == "cuda" and bool(wanted)

    @contextlib.contextmanager
    def _running(self):
        """no_grad, autocast, and (offloaded) the weights on the device for the block only."""
        if self.offload:
            self.model.to(self.device)
        try:
            with torch.no_grad(), torch.autocast(self.device.type, enabled=self.autocast):
                yield
        finally:
            if self.offload:
                self.model.to("cpu")
                free_accelerator_memory()

    def predict(self, vol: ModelInput, box=None, batch_size: int | None = None) -> Prediction:
        with self._running():
            out = self.task.predict_volume(self.model, vol, self.device, box=box, batch_size=batch_size)
        return self._finite(out, vol)

    def _finite(self, out: Prediction, vol: ModelInput) -> Prediction:
        """NaN or inf stops here, naming the weights and the case-day or image (a diverged training, a corrupt file)."""
        if isinstance(out, np.ndarray) and not np.isfinite(out).all():
            raise DataError(f"{self.info.dir.weights}: the model predicts non-finite values for {vol.name} "
                            "(NaN or inf weights?)")
        return out

    def predict_many(self, vols: list[ModelInput], boxes: list | None = None, batch_size: int | None = None) -> list:
        """Predictions of several volumes of one shape (a case-day and its flips): in shared forward
        passes when the task can (`predict_volumes`), else one after the other."""
        boxes = boxes or [None] * len(vols)
        with self._running():
            if hasattr(self.task, "predict_volumes"):
                outs = self.task.predict_volumes(self.model, vols, self.device, boxes, batch_size)
            else:
                outs = [self.task.predict_volume(self.model, v, self.device, box=b, batch_size=batch_size)
                        for v, b in zip(vols, boxes)]
        return [self._finite(out, vol) for out, vol in zip(outs, vols)]


def free_accelerator_memory() -> None:
    """Return the CUDA caching allocator's free blocks (a no-op without CUDA)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()

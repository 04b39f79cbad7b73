"""A trained fold rebuilt for prediction: its stage's config and task from config.json, its weights
from best.pt (loaded with weights_only=True)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from src.core.artifacts import Prediction
from src.core.checkpoint import load_checkpoint
from src.core.errors import DataError
from src.data.volumes import CaseDay
from src.engine.stages import check_arch, get_stage
from src.engine.trainer import Task
from src.inference.runs import TrainedFold


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
    """A loaded fold model and the task that feeds it whole case-days."""

    info: TrainedFold
    task: Task
    model: nn.Module
    device: torch.device

    @classmethod
    def load(cls, info: TrainedFold, device: torch.device, cache_dir: Path) -> FoldModel:
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
        model.to(device).eval()
        if getattr(cfg, "channels_last", False):
            model = model.to(memory_format=torch.channels_last)
        return cls(info, task, model, device)

    def predict(self, vol: CaseDay, box=None, batch_size: int | None = None) -> Prediction:
        amp = self.device.type == "cuda" and getattr(self.task.cfg, "amp", True)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=amp):
            out = self.task.predict_volume(self.model, vol, self.device, box=box, batch_size=batch_size)
        if isinstance(out, np.ndarray) and not np.isfinite(out).all():
            raise DataError(f"{self.info.dir.weights}: the model predicts non-finite values for {vol.case_day} "
                            "(NaN or inf weights?)")
        return out

"""The stage registry: every trained stage (seg2d, seg3d, cls, det) registers here once.

A stage names its config class, its task class (the `Task` protocol of src.engine.trainer), the
kind of output its models predict, its blend group, and the trainer that fits it. train, predict,
ensemble, report and pipeline look stages up here; adding a stage is one new module under
src/engine/ that calls `register_stage`, plus its name in STAGE_MODULES.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from src.core.errors import DataError

# What a stage's model predicts per case-day: segmenters (Z, 3, H, W) probabilities, the slice
# classifier (Z, 3) presence probabilities, the detector a crop box record.
OUTPUTS = ("probabilities", "presence", "box")
# Modules whose import registers a stage.
STAGE_MODULES = ("src.engine.seg2d", "src.engine.seg3d", "src.engine.cls", "src.engine.det")


@dataclass(frozen=True)
class StageSpec:
    name: str
    config: type  # its frozen config dataclass (src.engine.config)
    task: Callable  # task(cfg, cache_dir) -> its task: build_model, train_dataset, loss, evaluate, predict_volume
    output: str  # one of OUTPUTS
    group: str | None  # blend group of a segmenter ("2d" | "3d"); None for a gate or a crop
    trainer: Callable  # trainer(task, case_days) -> an object whose fit(resume) returns the best score
    description: str

    @property
    def segmenter(self) -> bool:
        return self.output == "probabilities"


_STAGES: dict[str, StageSpec] = {}


def register_stage(spec: StageSpec) -> StageSpec:
    if spec.name in _STAGES:
        raise ValueError(f"stage {spec.name!r} registered twice")
    if spec.output not in OUTPUTS:
        raise ValueError(f"stage {spec.name!r}: output {spec.output!r} is not one of {OUTPUTS}")
    _STAGES[spec.name] = spec
    return spec


def _load_all() -> None:
    for module in STAGE_MODULES:
        importlib.import_module(module)


def list_stages() -> list[StageSpec]:
    _load_all()
    return [_STAGES[name] for name in sorted(_STAGES)]


def stage_names() -> list[str]:
    """The stage names, without importing the stage modules (for argument parsing)."""
    return [m.rsplit(".", 1)[1] for m in STAGE_MODULES]


def get_stage(name: str) -> StageSpec:
    if name not in stage_names():
        raise DataError(f"--stage {name!r}: valid stages are {', '.join(stage_names())}")
    _load_all()
    return _STAGES[name]


def check_arch(stage: str, arch: str) -> None:
    """One-line error unless `arch` is registered for `stage` (done once, before any work)."""
    from src.models.registry import get_arch, list_archs

    try:
        found = get_arch(arch).stage
    except KeyError as exc:
        raise DataError(f"--arch: {exc.args[0]}") from None
    if found != stage:
        valid = ", ".join(a.name for a in list_archs(stage=stage))
        raise DataError(f"--arch {arch} is a {found} arch; the {stage} stage takes one of: {valid}")

"""Training one fold of any stage: the one generic entry the train CLI calls."""
from __future__ import annotations

import os
from pathlib import Path

from src.core.device import select_device
from src.core.errors import DataError
from src.data.preparation import prepare
from src.data.volumes import VolumeCache, cache_dir_for
from src.engine.config import TrainConfig
from src.engine.stages import check_arch, get_stage


def ensure_cache(cfg: TrainConfig) -> tuple[Path, list[str]]:
    """The cache of cfg.data_dir and its train case-days; runs prepare now if it is empty (one process only)."""
    cache_dir = cache_dir_for(cfg.cache_dir, cfg.data_dir)
    case_days = VolumeCache(cache_dir).case_days("train")
    if not case_days:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise DataError(f"{cache_dir}: empty cache; run python -m src.prepare --data-dir {cfg.data_dir} before torchrun")
        prepare(cfg.data_dir, cache_dir)
        case_days = VolumeCache(cache_dir).case_days("train")
    if not case_days:
        raise DataError(f"{cfg.data_dir}: no training case-day found")
    return cache_dir, case_days


def train(cfg: TrainConfig, resume: bool = False) -> float:
    """Train one fold of cfg.stage; return its best validation score (NaN for fold 'all')."""
    select_device(cfg.device)  # before any work (ensure_cache may prepare the cache)
    spec = get_stage(cfg.stage)
    if not isinstance(cfg, spec.config):
        raise DataError(f"stage {cfg.stage}: expected a {spec.config.__name__}, got {type(cfg).__name__}")
    check_arch(spec.name, cfg.arch)
    cache_dir, case_days = ensure_cache(cfg)
    return spec.trainer(spec.task(cfg, cache_dir), case_days).fit(resume)

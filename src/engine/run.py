"""Training one fold of any stage: the one generic entry the train CLI calls."""
from __future__ import annotations

import os
from pathlib import Path

from src.core.device import select_device
from src.core.errors import DataError
from src.data.image_cache import ImageCache, is_image_cache
from src.data.preparation import ensure_prepared
from src.data.volumes import VolumeCache, cache_dir_for
from src.engine.config import TrainConfig
from src.engine.stages import check_arch, get_stage

IMAGE_STAGES = ("seg2d", "cls")  # the stages that train on 2D images (each with its image task)


def train_entries(cache_dir: Path) -> list[str]:
    """The train entries of a cache: case-days in (case, day) order, or a 2D cache's keys in id order."""
    if is_image_cache(cache_dir):
        return ImageCache(cache_dir).table("train")["key"].tolist()
    return VolumeCache(cache_dir).case_days("train")


def ensure_cache(cfg: TrainConfig) -> tuple[Path, list[str]]:
    """The cache of cfg.data_dir and its train entries (case-days, or a 2D dataset's image keys); runs
    prepare now (any format it detects) if it is empty (one process only)."""
    cache_dir = cache_dir_for(cfg.cache_dir, cfg.data_dir)
    if not train_entries(cache_dir) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DataError(f"{cache_dir}: empty cache; run python -m src.prepare --data-dir {cfg.data_dir} before torchrun")
    case_days = train_entries(ensure_prepared(cfg.data_dir, cache_dir, log=lambda line: None))
    if not case_days:
        raise DataError(f"{cfg.data_dir}: no training case-day or labelled image found")
    return cache_dir, case_days


def train(cfg: TrainConfig, resume: bool = False) -> float:
    """Train one fold of cfg.stage; return its best validation score (NaN for fold 'all')."""
    select_device(cfg.device)  # before any work (ensure_cache may prepare the cache)
    spec = get_stage(cfg.stage)
    if not isinstance(cfg, spec.config):
        raise DataError(f"stage {cfg.stage}: expected a {spec.config.__name__}, got {type(cfg).__name__}")
    check_arch(spec.name, cfg.arch)
    cache_dir, case_days = ensure_cache(cfg)
    if spec.name not in IMAGE_STAGES and is_image_cache(cache_dir):
        raise DataError(f"--stage {spec.name}: {cache_dir} holds 2D images; train them with --stage "
                        f"{' or '.join(IMAGE_STAGES)}")
    return spec.trainer(spec.task(cfg, cache_dir), case_days).fit(resume)

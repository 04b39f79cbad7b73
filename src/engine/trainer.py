"""The training loop shared by every trained stage (2.5D, classifier, 3D).

A stage supplies a `Task` (model, dataset, loss, whole-volume prediction and scoring); the loop
owns everything else: AdamW with warm-up then cosine/poly decay, mixed precision on CUDA, gradient
accumulation, EMA, channels_last, DDP under torchrun, validation every epoch with the competition
metric, best checkpoint, early stopping, out-of-fold probabilities, a CSV log, and exact resume.

Run folder `runs/<name>/fold<k>/`: config.json, best.pt (weights of the best epoch, EMA if on),
last.pt (full state for --resume), log.csv, oof/<case_day>.npy (float16), oof_scores.csv,
done.json (written last: the run is complete).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from src.core.atomic import atomic_path, write_json_atomic, write_text_atomic
from src.core.errors import DataError
from src.core.seed import seed_everything
from src.engine.config import TrainConfig
from src.engine.distributed import DistInfo, barrier, broadcast_object, init_distributed, shutdown, sum_over_ranks
from src.models.weights import load_encoder_weights


@dataclass(frozen=True)
class Evaluation:
    """Validation result: the number checkpoints are chosen by, and a per-case-day table."""

    score: float
    metrics: dict[str, float]
    per_case_day: pd.DataFrame


class Task(Protocol):
    """What a stage plugs into the loop."""

    cfg: TrainConfig

    def build_model(self) -> nn.Module: ...

    def train_dataset(self, case_days: list[str]) -> Dataset: ...  # with set_epoch(epoch)

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, case_days: list[str], device: torch.device,
                 oof_dir: Path) -> Evaluation: ...


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda: no CUDA device is available")
    return torch.device(name)


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Set the running-statistics momentum of every BatchNorm of `model`."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def split_case_days(cfg: TrainConfig, all_case_days: list[str]) -> tuple[list[str], list[str]]:
    """(train, validation) case-days for cfg.fold from the saved folds file."""
    from src.data.folds import load_folds

    excluded = set(cfg.excluded)
    available = [cd for cd in all_case_days if cd not in excluded]
    if cfg.fold == "all":
        return available, []
    folds = load_folds(cfg.folds_csv)
    try:
        fold = int(cfg.fold)
    except ValueError:
        raise DataError(f"--fold {cfg.fold!r}: expected a fold number or 'all'") from None
    if fold not in set(folds["fold"]):
        raise DataError(f"{cfg.folds_csv}: has no fold {fold} (folds: {sorted(set(folds['fold']))})")
    fold_of = dict(zip(folds["case_day"], folds["fold"]))
    missing = [cd for cd in available if cd not in fold_of]
    if missing:
        raise DataError(f"{cfg.folds_csv}: case-day {missing[0]} of the cache has no fold (re-run make_folds)")
    train = [cd for cd in available if fold_of[cd] != fold]
    val = [cd for cd in available if fold_of[cd] == fold]
    return train, val


def prepared_cache(cfg: TrainConfig) -> tuple[Path, list[str]]:
    """The cache of cfg.data_dir and its train case-days; prepared now if empty (single process only)."""
    from src.data.volumes import VolumeCache, default_cache_dir

    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(cfg.data_dir)
    case_days = VolumeCache(cache_dir).case_days("train")
    if not case_days:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise DataError(f"{cache_dir}: empty cache; run python -m src.prepare --data-dir {cfg.data_dir} before torchrun")
        from src.data.preparation import prepare

        prepare(cfg.data_dir, cache_dir)
        case_days = VolumeCache(cache_dir).case_days("train")
    if not case_days:
        raise DataError(f"{cfg.data_dir}: no training case-day found")
    return cache_dir, case_days


def lr_lambda(cfg: TrainConfig, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up for `warmup_epochs`, then cosine or poly(0.9) decay to zero."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule not in ("cosine", "poly"):
        raise DataError(f"--schedule {cfg.schedule!r}: expected cosine or poly")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1 + math.cos(math.pi * t)) if cfg.schedule == "cosine" else (1 - t) ** 0.9

    return factor


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _save_torch_atomic(obj, target: Path) -> None:
    with atomic_path(target, suffix=".pt") as tmp:
        torch.save(obj, tmp)


def _epoch_order(cfg: TrainConfig, n: int, epoch: int, dist_info: DistInfo) -> list[int]:
    """This rank's sample indices for an epoch, in loader order.

    One permutation per (seed, epoch); each global batch of `batch_size` samples is dealt out in
    equal parts to the ranks, so N processes see exactly the batches one process would see.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 10_007 + epoch)).tolist()
    if cfg.samples_per_epoch:
        perm = perm[:cfg.samples_per_epoch]
        n = len(perm)
    if dist_info.world == 1:
        return perm
    share = cfg.batch_size // dist_info.world
    order = []
    for start in range(0, n - cfg.batch_size + 1, cfg.batch_size):
        first = start + dist_info.rank * share
        order.extend(perm[first:first + share])
    return order


class Trainer:
    """Fits one fold of one run; `fit()` returns the best validation score (NaN for fold 'all')."""

    def __init__(self, task: Task, all_case_days: list[str]):
        self.task, self.cfg = task, task.cfg
        self.device = select_device(self.cfg.device)
        self.dist = init_distributed(self.device)
        if self.device.type == "cuda" and self.dist.world > 1:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.train_cds, self.val_cds = split_case_days(self.cfg, all_case_days)
        if not self.train_cds:
            raise DataError("no case-day left to train on (check --fold, --exclude and the folds file)")
        if self.cfg.batch_size % self.dist.world:
            raise DataError(f"--batch-size {self.cfg.batch_size} is the global batch: it must divide by the {self.dist.world} processes")
        self.batch_per_rank = self.cfg.batch_size // self.dist.world
        self.run_dir = Path(self.cfg.out) / self.cfg.run_name / f"fold{self.cfg.fold}"
        self.use_amp = self.cfg.amp and self.device.type == "cuda"

    # ---- setup -------------------------------------------------------------------------
    def _check_run_dir(self, resume: bool) -> None:
        saved = self.run_dir / "config.json"
        if not saved.exists():
            return
        previous = json.loads(saved.read_text())["config"]
        if previous != dataclasses.asdict(self.cfg):
            changed = sorted(k for k in set(previous) | set(dataclasses.asdict(self.cfg))
                             if previous.get(k) != dataclasses.asdict(self.cfg).get(k))
            if resume:
                raise DataError(f"{saved}: --resume with a different config (changed: {', '.join(changed)})")
        if not resume and self.dist.is_main:
            shutil.rmtree(self.run_dir)  # a fresh run replaces the old one

    def _build(self):
        model = self.task.build_model()
        if self.cfg.encoder_weights:
            load_encoder_weights(model, self.cfg.encoder_weights)
        if self.cfg.bn_momentum > 0:
            set_bn_momentum(model, self.cfg.bn_momentum)
        model.to(self.device)
        if self.cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        ema = None
        if self.cfg.ema > 0:
            ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema), use_buffers=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        return model, ema, optimizer

    # ---- the loop ----------------------------------------------------------------------
    def fit(self, resume: bool = False, stop_after_epoch: int | None = None) -> float:
        """Train; `stop_after_epoch` ends this process early as a kill would (for resume tests)."""
        cfg = self.cfg
        if self.dist.is_main:
            self._check_run_dir(resume)
        barrier(self.dist)
        seed_everything(cfg.seed)
        dataset = self.task.train_dataset(self.train_cds)
        model, ema, optimizer = self._build()
        steps_per_epoch = max(1, len(_epoch_order(cfg, len(dataset), 0, self.dist)) // self.batch_per_rank // cfg.accum_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps_per_epoch * cfg.epochs, steps_per_epoch))
        scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        state = {"epoch": 0, "best_score": -math.inf, "best_epoch": -1, "bad_epochs": 0}
        last = self.run_dir / "last.pt"
        if resume and last.exists():
            ckpt = torch.load(last, map_location=self.device, weights_only=False)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            if ema is not None:
                ema.load_state_dict(ckpt["ema"])
            state = ckpt["state"]
            _set_rng_state(ckpt["rng"])
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.run_dir / "config.json", {
                "config": dataclasses.asdict(cfg), "seed": cfg.seed, "train_case_days": self.train_cds,
                "val_case_days": self.val_cds, "world_size": self.dist.world,
                "versions": {"torch": torch.__version__}})
        if self.dist.world > 1 and self.device.type == "cuda":
            # BatchNorm statistics over the global batch; gloo on CPU has no SyncBatchNorm, so there
            # each process normalises its share of the batch (the one difference from one process).
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = DistributedDataParallel(model) if self.dist.world > 1 else model
        for epoch in range(state["epoch"], cfg.epochs):
            dataset.set_epoch(epoch)
            train_stats = self._train_epoch(net, ema, optimizer, scheduler, scaler, dataset, epoch)
            eval_model = ema.module if ema is not None else model
            row = {"epoch": epoch, **train_stats, "lr": optimizer.param_groups[0]["lr"]}
            improved = False
            if self.dist.is_main:
                if self.val_cds:
                    evaluation = self._validate(eval_model)
                    row.update(evaluation.metrics)
                    improved = evaluation.score > state["best_score"]
                    if improved:
                        state.update(best_score=evaluation.score, best_epoch=epoch, bad_epochs=0)
                        self._promote_oof(evaluation)
                    else:
                        state["bad_epochs"] += 1
                if improved or not self.val_cds:
                    _save_torch_atomic({"model": eval_model.state_dict(), "epoch": epoch}, self.run_dir / "best.pt")
                state["epoch"] = epoch + 1
                self._append_log(row)
                _save_torch_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                    "ema": ema.state_dict() if ema is not None else None,
                                    "state": state, "rng": _rng_state()}, last)
            state = broadcast_object(self.dist, state)
            stop = cfg.patience > 0 and state["bad_epochs"] >= cfg.patience
            if stop or (stop_after_epoch is not None and epoch + 1 >= stop_after_epoch):
                break
        finished = state["epoch"] >= cfg.epochs or (cfg.patience > 0 and state["bad_epochs"] >= cfg.patience)
        if finished and self.dist.is_main:
            write_json_atomic(self.run_dir / "done.json", {
                "best_score": state["best_score"] if self.val_cds else None,
                "best_epoch": state["best_epoch"], "epochs_run": state["epoch"]})
        shutil.rmtree(self.run_dir / "oof.staging", ignore_errors=True)
        barrier(self.dist)
        shutdown(self.dist)
        return state["best_score"] if self.val_cds else float("nan")

    def _train_epoch(self, net, ema, optimizer, scheduler, scaler, dataset, epoch) -> dict[str, float]:
        cfg = self.cfg
        order = _epoch_order(cfg, len(dataset), epoch, self.dist)
        loader = DataLoader(dataset, batch_size=self.batch_per_rank, sampler=order, num_workers=cfg.workers,
                            drop_last=len(order) >= self.batch_per_rank, pin_memory=self.device.type == "cuda")
        net.train()
        total, count, wait, busy = 0.0, 0, 0.0, 0.0
        optimizer.zero_grad(set_to_none=True)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=None if self.dist.is_main else True)
        tick = time.perf_counter()
        for step, batch in enumerate(bar):
            started = time.perf_counter()
            wait += started - tick
            with torch.autocast(self.device.type, enabled=self.use_amp):
                loss = self.task.loss(net, batch, self.device)
            scaler.scale(loss / cfg.accum_steps).backward()
            if (step + 1) % cfg.accum_steps == 0 or step + 1 == len(loader):
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(net.module if isinstance(net, DistributedDataParallel) else net)
            total += loss.item() * len(batch["index"])
            count += len(batch["index"])
            bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
            tick = time.perf_counter()
            busy += tick - started
        total, count = sum_over_ranks(self.dist, [total, count])
        return {"train_loss": total / max(count, 1), "data_wait_s": wait, "compute_s": busy}

    def _validate(self, model: nn.Module) -> Evaluation:
        staging = self.run_dir / "oof.staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.use_amp):
            return self.task.evaluate(model, self.val_cds, self.device, staging)

    def _promote_oof(self, evaluation: Evaluation) -> None:
        """Make the staged OOF probabilities of the new best epoch the run's oof/ (swap by rename)."""
        final, staging, old = self.run_dir / "oof", self.run_dir / "oof.staging", self.run_dir / "oof.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        with atomic_path(self.run_dir / "oof_scores.csv") as tmp:
            evaluation.per_case_day.to_csv(tmp, index=False)

    def _append_log(self, row: dict) -> None:
        path = self.run_dir / "log.csv"
        log = pd.read_csv(path) if path.exists() else pd.DataFrame()
        log = pd.concat([log, pd.DataFrame([row])], ignore_index=True)
        write_text_atomic(path, log.to_csv(index=False))

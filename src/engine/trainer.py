"""The training loop shared by the stages trained with torch (2.5D, classifier, 3D).

A stage supplies a `Task` (model, dataset, loss, whole-volume prediction and scoring); the loop
owns everything else: the optimizer (AdamW, Adam or SGD) with warm-up then cosine/poly decay, mixed precision on CUDA, gradient
accumulation, EMA, channels_last, DDP under torchrun, validation every epoch with the competition
metric, best checkpoint, early stopping, out-of-fold predictions, a CSV log, and exact resume.
What it writes goes into the fold's staging folder under the fold's lock, done marker last, and the
staging folder then replaces the fold (src.engine.fold_writer: also the --resume rule). The resume
state in last.pt is tensors and plain containers only, so it loads with `weights_only=True`.

`fit` is three steps around a `TrainingState`: restore (build, read the resume state, open the
staging folder), one epoch at a time, finish (done marker, swap).
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from src.core.artifacts import FoldRecord, Prediction, fold_dir
from src.core.checkpoint import load_checkpoint, save_checkpoint
from src.core.device import select_device
from src.core.errors import DataError
from src.core.seed import seed_everything
from src.engine.config import TrainConfig
from src.engine.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    init_distributed,
    shutdown,
    sum_over_ranks,
)
from src.engine.fold_writer import Plan, fold_lock, open_staging, plan_training
from src.engine.progress import epoch_line, in_terminal
from src.models.weights import load_encoder_weights


@dataclass(frozen=True)
class Evaluation:
    """Validation result: the number checkpoints are chosen by, and a per-case-day table."""

    score: float
    metrics: dict[str, float]
    per_case_day: pd.DataFrame


class Task(Protocol):
    """What every stage provides: its model, whole-volume prediction and validation.
    `box` is a crop (y0, y1, x0, x1) of the input, `batch_size` slices (or windows) per forward pass."""

    cfg: TrainConfig

    def build_model(self) -> nn.Module: ...

    def predict_volume(self, model: nn.Module, vol, device: torch.device, box=None,
                       batch_size: int | None = None) -> Prediction: ...

    def evaluate(self, model: nn.Module, case_days: list[str], device: torch.device,
                 save: Callable[[str, Prediction], object]) -> Evaluation: ...  # save(case_day, prediction)


class TrainableTask(Task, Protocol):
    """A task this loop trains: also its training samples and loss (the detector trains in ultralytics).
    A task whose ids are not case-days (2D images) also has `read_folds(path) -> {id: fold}` and
    `excluded_id(name) -> id` (what --exclude names: the sample ids that make_folds --exclude takes)."""

    def train_dataset(self, case_days: list[str]) -> Dataset: ...  # with set_epoch(epoch)

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor: ...


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """The optimizer named by --optimizer, at --lr and --weight-decay."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    kind = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    """Set the running-statistics momentum of every BatchNorm of `model`."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def case_day_folds(path: str) -> dict[str, int]:
    """The fold of each case-day, from a GI folds file."""
    from src.data.folds import load_folds

    folds = load_folds(path)
    return dict(zip(folds["case_day"], folds["fold"]))


def split_case_days(cfg: TrainConfig, all_case_days: list[str],
                    read_folds: Callable[[str], dict[str, int]] = case_day_folds,
                    excluded_id: Callable[[str], str] = str) -> tuple[list[str], list[str]]:
    """(train, validation) case-days (or other ids, with their `read_folds`) for cfg.fold from the saved folds
    file; `excluded_id` maps a name of --exclude to the id it leaves out (a 2D sample id to its cache key)."""
    excluded = {excluded_id(name) for name in cfg.excluded}
    available = [cd for cd in all_case_days if cd not in excluded]
    if cfg.fold == "all":
        return available, []
    fold_of = read_folds(cfg.folds_csv)
    try:
        fold = int(cfg.fold)
    except ValueError:
        raise DataError(f"--fold {cfg.fold!r}: expected a fold number or 'all'") from None
    if fold not in set(fold_of.values()):
        raise DataError(f"{cfg.folds_csv}: has no fold {fold} (folds: {sorted(set(fold_of.values()))})")
    missing = [cd for cd in available if cd not in fold_of]
    if missing:
        raise DataError(f"{cfg.folds_csv}: {missing[0]} of the cache has no fold (re-run make_folds)")
    train = [cd for cd in available if fold_of[cd] != fold]
    val = [cd for cd in available if fold_of[cd] == fold]
    return train, val


def lr_lambda(cfg: TrainConfig, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up for `warmup_epochs`, then cosine or poly(0.9) decay to zero."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1 + math.cos(math.pi * t)) if cfg.schedule == "cosine" else (1 - t) ** 0.9

    return factor


def _rng_state() -> dict:
    """Every generator's state as tensors and plain containers (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)}}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _epoch_order(cfg: TrainConfig, n: int, epoch: int, dist_info: DistInfo,
                 weights: np.ndarray | None = None) -> list[int]:
    """This rank's sample indices for an epoch, in loader order.

    One permutation per (seed, epoch) or, with sampling `weights` (class-balanced sampling), as many
    weighted draws with replacement; each global batch of `batch_size` samples is dealt out in equal
    parts to the ranks, so N processes see exactly the batches one process would see.
    """
    generator = torch.Generator().manual_seed(cfg.seed * 10_007 + epoch)
    if weights is not None:
        draws = cfg.samples_per_epoch or n
        perm = torch.multinomial(torch.as_tensor(weights, dtype=torch.float64), draws, replacement=True,
                                 generator=generator).tolist()
    else:
        perm = torch.randperm(n, generator=generator).tolist()
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


@dataclass
class TrainingState:
    """What the loop carries from one epoch to the next; saved in last.pt as a plain dict."""

    epoch: int = 0  # epochs completed
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0  # validated epochs since the best one (early stopping)

    def observe(self, epoch: int, score: float) -> bool:
        """Count a validation score; True when it is the best so far."""
        if score > self.best_score:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    def stops(self, patience: int) -> bool:
        return patience > 0 and self.bad_epochs >= patience

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw, path) -> TrainingState:
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(raw, dict) or sorted(raw) != sorted(names):
            found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise DataError(f"{path}: not a resume state of this trainer (state {found}, expected {names}); "
                            "train again without --resume")
        return cls(**raw)


@dataclass
class Parts:
    """The objects a training updates; last.pt holds their states with the TrainingState and the RNGs."""

    model: nn.Module
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler

    @property
    def eval_model(self) -> nn.Module:
        """What is validated and saved as best.pt: the EMA weights when there are some."""
        return self.ema.module if self.ema is not None else self.model

    def checkpoint(self, state: TrainingState) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "state": state.to_dict(), "rng": _rng_state()}

    def restore(self, ckpt: dict, path) -> TrainingState:
        """Load a checkpoint of `checkpoint` (the RNGs too); return its TrainingState."""
        missing = [k for k in ("optimizer", "scheduler", "scaler", "state", "rng") if k not in ckpt]
        if missing or (self.ema is not None and ckpt.get("ema") is None):
            raise DataError(f"{path}: not a resume state (lacks {', '.join(missing) or 'ema'}); "
                            "train again without --resume")
        state = TrainingState.from_dict(ckpt["state"], path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        _set_rng_state(ckpt["rng"])
        return state


class Trainer:
    """Fits one fold of one run; `fit()` returns the best validation score (NaN for fold 'all')."""

    def __init__(self, task: TrainableTask, all_case_days: list[str]):
        self.task, self.cfg = task, task.cfg
        self.device = select_device(self.cfg.device)
        self.dist = init_distributed(self.device)
        if self.device.type == "cuda" and self.dist.world > 1:
            self.device = torch.device("cuda", self.dist.local_rank)
        self.train_cds, self.val_cds = split_case_days(self.cfg, all_case_days, getattr(task, "read_folds", case_day_folds),
                                                       getattr(task, "excluded_id", str))
        if not self.train_cds:
            raise DataError("no case-day left to train on (check --fold, --exclude and the folds file)")
        if self.cfg.batch_size % self.dist.world:
            raise DataError(f"--batch-size {self.cfg.batch_size} is the global batch: it must divide by the {self.dist.world} processes")
        self.batch_per_rank = self.cfg.batch_size // self.dist.world
        self.fold = fold_dir(self.cfg.out, self.cfg.run_name, self.cfg.fold)  # replaced only when complete
        self.work = self.fold.staging  # where this training writes
        self.use_amp = self.cfg.amp and self.device.type == "cuda"

    # ---- setup -------------------------------------------------------------------------
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
        optimizer = make_optimizer(self.cfg, model.parameters())
        return model, ema, optimizer

    # ---- the loop ----------------------------------------------------------------------
    def fit(self, resume: bool = False) -> float:
        """Train (or, with `resume`, continue or return a finished fold's score: the rule in
        src.engine.fold_writer); return the best validation score."""
        with fold_lock(self.fold, held=self.dist.is_main):
            plan = broadcast_object(self.dist, plan_training(self.fold, self.cfg, resume) if self.dist.is_main else None)
            if plan is Plan.DONE:
                score = self.fold.read_done()["best_score"]
            else:
                dataset, parts, state = self._restore(plan)
                net = self._wrap(parts)
                while state.epoch < self.cfg.epochs and not state.stops(self.cfg.patience):
                    state = self._epoch(net, parts, dataset, state)
                score = self._finish(state)
        shutdown(self.dist)
        return float("nan") if score is None or not self.val_cds else score

    def _restore(self, plan: Plan):
        """Build everything and read the resume state (any bad input fails here, before a write), then
        open the staging folder and write the config: (dataset, parts, state)."""
        cfg = self.cfg
        seed_everything(cfg.seed)
        dataset = self.task.train_dataset(self.train_cds)
        model, ema, optimizer = self._build()
        weights = self._sample_weights(dataset)
        steps_per_epoch = max(1, len(_epoch_order(cfg, len(dataset), 0, self.dist, weights))
                              // self.batch_per_rank // cfg.accum_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps_per_epoch * cfg.epochs, steps_per_epoch))
        parts = Parts(model, ema, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=self.use_amp))
        state = TrainingState()
        source = {Plan.CONTINUE: self.fold.staging, Plan.ADOPT: self.fold.final}.get(plan)
        if source is not None:
            state = parts.restore(load_checkpoint(source.last, self.device), source.last)
        barrier(self.dist)  # every rank has read the resume state before the main one moves it
        if self.dist.is_main:
            open_staging(self.fold, plan)
            self.work.write_config(FoldRecord(dataclasses.asdict(cfg), tuple(self.train_cds), tuple(self.val_cds),
                                              cfg.seed, self.dist.world, {"torch": torch.__version__}))
        return dataset, parts, state

    def _wrap(self, parts: Parts) -> nn.Module:
        """The network the epochs train: under DDP, wrapped (and with synchronised BatchNorm on CUDA)."""
        if self.dist.world > 1 and self.device.type == "cuda":
            # BatchNorm statistics over the global batch; gloo on CPU has no SyncBatchNorm, so there
            # each process normalises its share of the batch (the one difference from one process).
            parts.model = nn.SyncBatchNorm.convert_sync_batchnorm(parts.model)
        return DistributedDataParallel(parts.model) if self.dist.world > 1 else parts.model

    def _epoch(self, net: nn.Module, parts: Parts, dataset, state: TrainingState) -> TrainingState:
        """Train one epoch, validate it (when due), save best.pt, log.csv and last.pt; the new state."""
        epoch, start = state.epoch, time.perf_counter()
        dataset.set_epoch(epoch)
        train_stats = self._train_epoch(net, parts, dataset, epoch)
        row = {"epoch": epoch, **train_stats, "lr": parts.optimizer.param_groups[0]["lr"]}
        if self.dist.is_main:
            improved, score = False, None
            if self.val_cds and self._validates(epoch):
                evaluation = self._validate(parts.eval_model)
                score = evaluation.score
                row.update(evaluation.metrics)
                improved = state.observe(epoch, evaluation.score)
                if improved:
                    self.work.promote_oof(evaluation.per_case_day)
            if improved or not self.val_cds:
                save_checkpoint({"model": parts.eval_model.state_dict(), "epoch": epoch}, self.work.weights)
            state.epoch = epoch + 1
            self.work.append_log(row)
            self._save_last(parts.checkpoint(state))
            if not in_terminal():  # a terminal has the progress bar instead
                print(epoch_line(epoch, self.cfg.epochs, row["train_loss"], score, time.perf_counter() - start,
                                 row["data_wait_s"]), flush=True)
        return broadcast_object(self.dist, state)

    def _finish(self, state: TrainingState) -> float | None:
        """Mark the staging folder done and make it the fold; the best score (None without validation)."""
        if self.val_cds and not math.isfinite(state.best_score):
            raise DataError(f"{self.work.path}: no epoch gave a finite validation score (best {state.best_score}); "
                            f"the fold is not marked done ({self.fold.path} is left as it was)")
        best = state.best_score if self.val_cds else None
        if self.dist.is_main:
            self.work.discard_oof_staging()
            self.work.write_done({"best_score": best, "best_epoch": state.best_epoch, "epochs_run": state.epoch})
            self.fold.commit_staging()
        barrier(self.dist)
        return best

    def _train_epoch(self, net, parts: Parts, dataset, epoch) -> dict[str, float]:
        cfg = self.cfg
        ema, optimizer, scheduler, scaler = parts.ema, parts.optimizer, parts.scheduler, parts.scaler
        order = _epoch_order(cfg, len(dataset), epoch, self.dist, self._sample_weights(dataset))
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
            if not torch.isfinite(loss.detach()):
                raise DataError(f"{self.work.path}: training loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                                "(lower --lr or check the data); the last complete epoch stays resumable")
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

    def _validates(self, epoch: int) -> bool:
        """--val-every N: validate after every N-th epoch and after the last."""
        return (epoch + 1) % self.cfg.val_every == 0 or epoch + 1 == self.cfg.epochs

    def _sample_weights(self, dataset) -> np.ndarray | None:
        """Class-balanced sampling (--balanced, 2.5D stages): organ-positive and empty slices drawn
        equally often."""
        if not getattr(self.cfg, "balanced", False):
            return None
        positive = np.asarray(dataset.positive, dtype=bool)
        if positive.all() or not positive.any():
            return None  # one kind only: nothing to balance
        return np.where(positive, 0.5 / positive.sum(), 0.5 / (~positive).sum())

    def _save_last(self, checkpoint: dict) -> None:
        save_checkpoint(checkpoint, self.work.last)

    def _validate(self, model: nn.Module) -> Evaluation:
        self.work.begin_oof()
        model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.use_amp):
            return self.task.evaluate(model, self.val_cds, self.device, self.work.stage_oof)

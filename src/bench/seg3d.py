"""Benchmark of the 3D designs: `python -m src.bench.seg3d [--data-dir DIR] [--epochs N] [--device cpu|cuda]`.

Whole 3D, patch-wise and cascade (`--archs`: tiny nets by default, so that the defaults finish in a
few minutes on 2 CPU cores; `--archs unet3d,unet3d_patch,cascade3d` for the real ones). Per design,
one fresh process trains one fold for the same budget (epochs x crops per case-day) and another
predicts every validation case-day again with the best weights. The table gives the parameters, the
training seconds, the peak memory of training (with its validation) and of inference alone (CUDA:
torch.cuda.max_memory_allocated; CPU: growth of the peak resident set size, Linux's VmHWM, over the
phase), the median inference seconds per case-day and the best validation score (the competition
metric). Without --data-dir a small synthetic set is generated in a temporary folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pandas as pd
import torch

from src.core.artifacts import fold_dir
from src.core.checkpoint import load_checkpoint
from src.core.device import select_device
from src.core.errors import DataError, run_cli
from src.core.memory import reset_peak_rss, status_kib
from src.data.folds import make_folds
from src.data.synthetic import generate
from src.engine.config import Seg3DConfig
from src.engine.run import ensure_cache
from src.engine.seg3d import Seg3DTask
from src.engine.trainer import Trainer
from src.models.registry import count_parameters, get_arch

SYNTHETIC_SIZES = [(120, 104), (88, 88)]  # W, H: about a third of the real sizes
SYNTHETIC_SLICES = [48, 27]  # a third of 144 and 80


class PeakMemory:
    """Peak memory of a block in MB: CUDA max allocated, or on CPU the growth of the peak RSS."""

    def __init__(self, device: torch.device):
        self.device, self.mb = device, float("nan")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:
            reset_peak_rss()
        except OSError as exc:
            raise DataError(f"/proc/self/clear_refs: cannot reset the peak RSS ({exc}); CPU memory needs Linux") from None
        self.base = status_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.mb = (status_kib("VmHWM") - self.base) / 1024


def train_design(cfg: Seg3DConfig, threads: int) -> dict:
    """Train cfg on its fold: parameters, seconds, peak memory (training and validation), best score."""
    if threads:
        torch.set_num_threads(threads)
    cache_dir, case_days = ensure_cache(cfg)
    device = select_device(cfg.device)
    task = Seg3DTask(cfg, cache_dir)
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        score = Trainer(task, case_days).fit()
        seconds = time.perf_counter() - start
    return {"arch": cfg.arch, "params": f"{count_parameters(task.build_model()) / 1e6:.3f}M",
            "train s": round(seconds, 1), "train+val peak MB": round(memory.mb), "score": round(score, 4)}


def infer_design(cfg: Seg3DConfig, threads: int) -> dict:
    """Predict every validation case-day of a trained cfg: peak memory (weights included), median seconds."""
    if threads:
        torch.set_num_threads(threads)
    cache_dir, _ = ensure_cache(cfg)
    device = select_device(cfg.device)
    task = Seg3DTask(cfg, cache_dir)
    fold = fold_dir(cfg.out, cfg.run_name, cfg.fold)
    val = fold.read_config().val_case_days
    seconds = []
    with PeakMemory(device) as memory, torch.no_grad():
        model = task.build_model()
        model.load_state_dict(load_checkpoint(fold.weights)["model"])
        model.to(device).eval()
        for cd in val:
            vol = task.cache.load(cd)
            start = time.perf_counter()
            task.predict_volume(model, vol, device)
            seconds.append(time.perf_counter() - start)
    return {"infer peak MB": round(memory.mb), "infer s/case-day": round(statistics.median(seconds), 3)}


def in_fresh_process(fn, *args):
    """fn(*args) in a new spawned process: its own allocator, so peaks of other phases cannot hide in it."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _dataset(args: argparse.Namespace, tmp: Path) -> tuple[str, str, str]:
    """(data dir, cache dir, folds csv): the given ones, or a synthetic set generated under tmp, its
    cache there and 2 folds made now; an empty cache dir means the data's default cache."""
    data_dir, cache_dir = args.data_dir, args.cache_dir
    if data_dir is None:
        data_dir, cache_dir = str(tmp / "data"), cache_dir or str(tmp / "cache")
        generate(data_dir, cases=args.cases, seed=0, sizes=SYNTHETIC_SIZES, slices=SYNTHETIC_SLICES, workers=1)
    folds_csv = args.folds_csv
    if folds_csv is None:
        folds_csv = str(tmp / "folds.csv")
        make_folds(data_dir, n_folds=2, seed=0).to_csv(folds_csv, index=False)
    return data_dir, cache_dir, folds_csv


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.bench.seg3d", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="Kaggle-layout data (default: a generated synthetic set)")
    parser.add_argument("--cache-dir", default="", help="volume cache (default: the data's, or a temporary one)")
    parser.add_argument("--folds-csv", default=None, help="folds file (default: 2 folds made now)")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--cases", type=int, default=4, help="cases of the generated synthetic set")
    parser.add_argument("--archs", default="unet3d_tiny,unet3d_patch_tiny,cascade3d_tiny",
                        help="comma-separated seg3d archs, e.g. unet3d,unet3d_patch,cascade3d")
    parser.add_argument("--roi", default="64,64,32", help="training crop H,W,D (patch-wise archs: D = slab)")
    parser.add_argument("--slab", type=int, default=16)
    parser.add_argument("--cascade-scale", type=int, default=4)
    parser.add_argument("--sw-overlap", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples-per-volume", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--workers", type=int, default=0, help="training data-loader workers")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: timings that other loads on the cores disturb less; 0: torch's default)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = select_device(args.device)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    for arch in archs:
        try:
            if get_arch(arch).stage != "seg3d":
                raise DataError(f"--archs: {arch} is a {get_arch(arch).stage} arch, not seg3d")
        except KeyError as exc:
            raise DataError(f"--archs: {exc.args[0]}") from None
    with tempfile.TemporaryDirectory(prefix="bench3d_") as tmp:
        data_dir, cache_dir, folds_csv = _dataset(args, Path(tmp))
        base = Seg3DConfig(data_dir=data_dir, cache_dir=cache_dir, folds_csv=folds_csv, out=str(Path(tmp) / "runs"),
                           fold=args.fold, roi=args.roi, slab=args.slab, cascade_scale=args.cascade_scale,
                           sw_overlap=args.sw_overlap, epochs=args.epochs, samples_per_volume=args.samples_per_volume,
                           batch_size=args.batch_size, lr=args.lr, device=args.device, workers=args.workers)
        ensure_cache(base)  # once, before the designs' processes start
        rows = []
        for arch in archs:
            cfg = dataclasses.replace(base, arch=arch)
            rows.append({**in_fresh_process(train_design, cfg, args.threads),
                         **in_fresh_process(infer_design, cfg, args.threads)})
    print(f"3D designs on {args.data_dir or 'a generated synthetic set'}, fold {args.fold}, "
          f"device {device.type} ({args.threads or torch.get_num_threads()} CPU threads), roi {args.roi} (H,W,D), slab {args.slab}, "
          f"cascade scale {args.cascade_scale}, overlap {args.sw_overlap}, {args.epochs} epochs x "
          f"{args.samples_per_volume} crops per case-day, batch {args.batch_size}")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    run_cli(main)

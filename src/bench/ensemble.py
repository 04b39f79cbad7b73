"""Scale benchmark of the ensemble tuner: `python -m src.bench.ensemble --case-days 8,16 --models 2,4`.

Fabricates, per size, a truth cache and M out-of-fold runs in the project's own formats (the cache
of src.data.volumes, fold folders of src.core.artifacts with float16 OOF volumes), with realistic
probabilities: each good model sees the truth blurred, with smooth noise, a little shift and a few
false-positive blobs; one model in three is a 3D model (its own blend group, so the fusion weight
is searched too). The last `--weak K` models of each size (default 1) are weak, like a one-epoch
model: smooth noise mostly in [0.3, 0.6] over the whole volume with only a faint bump on the truth,
so their region of interest (voxels above ROI_THRESHOLD in any model) is nearly the whole volume,
the tuner's worst case. Then it runs `src.ensemble tune` on them in a fresh process and prints, per
size: the OOF volume on disk, wall time, evaluations, seconds per evaluation, the proxies' grid
stride and size, the peak RSS (the tuner's growth plus its workers' peaks), the exact scores, the
best single model's OOF score and what the tuner wrote (scores["choice"]["written"], "-" if absent).

The search is tune's default (two passes, the held-out estimate over every fold; `--passes`,
`--no-holdout` make it cheaper). The real train set (274 case-days x 10 models, 167 GB of float16
OOF) does not fit this disk: `--distinct D` fabricates D distinct case-days and gives the others the
same OOF and truth files by hard links (each with its own cache entry), so the tuner's work is the real
size's while the files it reads repeat (and may come from the page cache: reading 167 GB from a
real disk adds its own time, once for the proxies and once for the exact scores).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy import ndimage

from src.bench.metric import _smooth_noise, organ_masks
from src.core.artifacts import CacheEntryFiles, FoldRecord, fold_dir
from src.core.atomic import write_json_atomic
from src.core.errors import DataError, run_cli
from src.core.memory import reset_peak_rss, status_kib
from src.data.volumes import write_case_day
from src.ensembling.tune import TuneOptions, tune


def fake_probabilities(rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    """A model-like float16 (Z, 3, H, W) prediction of a uint8 truth: blurred, noisy, shifted, with blobs."""
    out = np.empty(truth.shape, dtype=np.float16)
    for c in range(truth.shape[1]):
        t = np.roll(truth[:, c].astype(np.float32), tuple(int(s) for s in rng.integers(-2, 3, 3)), axis=(0, 1, 2))
        p = ndimage.gaussian_filter(t, sigma=(1.0, 2.0, 2.0))
        p += 0.25 * _smooth_noise(rng, t.shape, cells=6) - 0.1
        for _ in range(int(rng.integers(1, 4))):  # false-positive blobs
            z, y, x = (int(rng.integers(0, n)) for n in t.shape)
            p[max(z - 2, 0):z + 2, max(y - 6, 0):y + 6, max(x - 6, 0):x + 6] += 0.6
        out[:, c] = np.clip(p, 0, 1)
    return out


def fake_weak_probabilities(rng: np.random.Generator, truth: np.ndarray) -> np.ndarray:
    """A weak (e.g. one-epoch) model's float16 (Z, 3, H, W) prediction: smooth noise over the whole volume
    mostly in [0.3, 0.6], so its region of interest is nearly the whole volume, and only a faint bump
    (+ 0.15 x the blurred truth) where the truth is."""
    out = np.empty(truth.shape, dtype=np.float16)
    for c in range(truth.shape[1]):
        p = 0.45 + 0.14 * _smooth_noise(rng, truth[:, c].shape, cells=6)
        p += 0.15 * ndimage.gaussian_filter(truth[:, c].astype(np.float32), sigma=(1.0, 2.0, 2.0))
        out[:, c] = np.clip(p, 0, 1)
    return out


def check_weak(weak: int, models: int) -> None:
    """At least one good model per size: 0 <= weak < models, else a one-line error naming --weak."""
    if not 0 <= weak < models:
        raise DataError(f"--weak {weak}: must be at least 0 and below the number of models ({models}; with several "
                        "--models values, the smallest), so that at least one good model remains")


def fabricate(root: Path, case_days: int, models: int, shape: tuple[int, int, int], folds: int, seed: int,
              distinct: int | None = None, weak: int = 0) -> list[Path]:
    """A truth cache under root/cache and `models` OOF runs under root/runs; returns the run folders.
    Case-day i beyond the first `distinct` repeats case-day i mod distinct (OOF files hard-linked).
    The last `weak` runs (named w<k>, the others m<k>) are weak models (fake_weak_probabilities)."""
    check_weak(weak, models)
    rng = np.random.default_rng(seed)
    names = [f"case{i // 2 + 1}_day{i % 2}" for i in range(case_days)]
    fold_of = {cd: (i // 2) % folds for i, cd in enumerate(names)}
    distinct = min(distinct or case_days, case_days)
    z, h, w = shape
    is_weak = [k >= models - weak for k in range(models)]
    runs = [root / "runs" / f"{'w' if is_weak[k] else 'm'}{k}" for k in range(models)]
    truths = []
    for i, cd in enumerate(names):
        if i < distinct:
            truths.append(organ_masks(rng, shape))
        meta = {"case_day": cd, "ids": [f"{cd}_slice_{s:04d}" for s in range(1, z + 1)], "height": h, "width": w}
        if i < distinct:
            write_case_day(root / "cache", "train", cd, np.zeros(shape, np.uint16), truths[i], meta)
        else:
            _link_case_day(root / "cache", names[i % distinct], cd, meta)
        for run, weak_model in zip(runs, is_weak):
            fold = fold_dir(run.parent, run.name, fold_of[cd])
            fold.oof_dir.mkdir(parents=True, exist_ok=True)
            if i < distinct:
                fake = fake_weak_probabilities if weak_model else fake_probabilities
                np.save(fold.oof_dir / f"{cd}.npy", fake(rng, truths[i]))
            else:
                base = names[i % distinct]
                (fold.oof_dir / f"{cd}.npy").hardlink_to(fold_dir(run.parent, run.name, fold_of[base]).oof_dir
                                                         / f"{base}.npy")
    for k, run in enumerate(runs):
        stage = "seg3d" if k % 3 == 2 else "seg2d"
        for f in range(folds):
            fold = fold_dir(run.parent, run.name, f)
            fold.write_config(FoldRecord({"stage": stage, "arch": "x", "fold": str(f)},
                                         val_case_days=tuple(cd for cd in names if fold_of[cd] == f)))
            fold.weights.write_bytes(b"")
            fold.write_done({"best_score": None})
    return runs


def _link_case_day(cache: Path, base: str, case_day: str, meta: dict) -> None:
    """A cache entry for `case_day` whose arrays are hard links to those of `base`."""
    source, target = CacheEntryFiles.of(cache, "train", base), CacheEntryFiles.of(cache, "train", case_day)
    target.folder.mkdir(parents=True, exist_ok=True)
    for name in ("image", "mask"):
        getattr(target, name).hardlink_to(getattr(source, name))
    write_json_atomic(target.meta, {**meta, "arrays": json.loads(source.meta.read_text())["arrays"]})


def _tune_once(root: str, runs: list[str], passes: int, holdout: bool, workers: int, memory_gb: float,
               screen: int) -> dict:
    """Run the tuner in this (fresh) process: wall time, evaluations, peak RSS growth plus the workers'."""
    reset_peak_rss()
    base = status_kib("VmRSS")
    start = time.perf_counter()
    record = tune(TuneOptions(runs=tuple(map(Path, runs)), out=Path(root) / "ensemble.json",
                              cache_dir=Path(root) / "cache", holdout_folds=None if holdout else (), passes=passes,
                              workers=workers, memory_gb=memory_gb, screen=screen), log=lambda line: None)
    seconds = time.perf_counter() - start
    search, scores = record["search"], record["scores"]
    singles = [s["score"] for s in scores["models"].values() if s.get("score") is not None]
    return {"wall_s": seconds, "evaluations": search["evaluations"], "stride": search["proxy"]["stride"],
            "proxy_gb": search["proxy"]["bytes"] / 2**30,
            "peak_rss_gb": (status_kib("VmHWM") - base) / 2**20 + search["workers_peak_rss_gb"],
            **{f"{phase}_s": seconds for phase, seconds in search["seconds"].items()},
            "in_sample": scores["tuned_in_sample"]["score"],
            "held_out": scores.get("tuned_held_out", {}).get("score"),
            "best_single": max(singles) if singles else None,
            "written": (scores.get("choice") or {}).get("written") or "-"}


def bench(case_days: int, models: int, shape: tuple[int, int, int], folds: int, passes: int, holdout: bool,
          workers: int, memory_gb: float, screen: int, distinct: int | None, seed: int, work: Path,
          weak: int = 0) -> dict:
    check_weak(weak, models)
    root = Path(tempfile.mkdtemp(prefix=f"ens_{case_days}x{models}_", dir=work))
    try:
        runs = fabricate(root, case_days, models, shape, folds, seed, distinct, weak)
        disk = sum(p.stat().st_size for p in (root / "runs").rglob("*.npy")) / 2**30  # hard links counted each
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            result = pool.submit(_tune_once, str(root), [str(r) for r in runs], passes, holdout, workers,
                                 memory_gb, screen).result()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rounded = {k: (round(v, 6 if k == "proxy_gb" else 4) if isinstance(v, float) else v) for k, v in result.items()}
    return {"case_days": case_days, "models": models, "weak": weak, "oof_gb": round(disk, 1), **rounded,
            "wall_s": round(result["wall_s"], 1), "s_per_eval": round(result["wall_s"] / result["evaluations"], 3)}


def int_list(text: str, flag: str) -> list[int]:
    """"1,2,4" -> [1, 2, 4]; a one-line error naming the flag otherwise."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise DataError(f"{flag} {text!r}: expected comma-separated integers") from None
    if any(v < 1 for v in values):
        raise DataError(f"{flag} {text!r}: every value must be at least 1")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.bench.ensemble", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case-days", default="8,16,32", help="comma-separated OOF case-day counts")
    parser.add_argument("--models", default="2,4", help="comma-separated model counts")
    parser.add_argument("--shape", default="144,266,266", help="Z,H,W of every case-day (the real train set's)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=2, help="coordinate-descent passes (tune's default, 2)")
    parser.add_argument("--no-holdout", action="store_true", help="skip the held-out estimate over every fold")
    parser.add_argument("--workers", type=int, default=2, help="tuner worker processes")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="the tuner's memory budget (its default)")
    parser.add_argument("--screen", type=int, default=16, help="the tuner's screening sample (its default)")
    parser.add_argument("--distinct", type=int, default=None,
                        help="distinct case-days fabricated; the others repeat them by hard links (default: all)")
    parser.add_argument("--weak", type=int, default=1,
                        help="the last K models of each size are weak (probabilities above 0.3 almost everywhere, "
                             "so the region of interest is nearly the whole volume); default 1, since real runs "
                             "include such models and 0 would hide the tuner's worst case; must be below every "
                             "--models value, so that a good model remains")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()), help="scratch folder")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (CSV)")
    args = parser.parse_args(argv)
    shape = tuple(int_list(args.shape, "--shape"))
    if len(shape) != 3:
        raise DataError(f"--shape {args.shape!r}: expected Z,H,W")
    model_counts = int_list(args.models, "--models")
    check_weak(args.weak, min(model_counts))  # before any size is fabricated
    sizes = [(models, n) for models in model_counts for n in int_list(args.case_days, "--case-days")]
    measure_sizes(sizes, lambda models, n: bench(n, models, shape, args.folds, args.passes, not args.no_holdout,
                                                 args.workers, args.memory_gb, args.screen, args.distinct, args.seed,
                                                 args.work, args.weak), args.out)
    return 0


def measure_sizes(sizes: list[tuple[int, int]], measure: Callable[[int, int], dict], out: Path | None) -> pd.DataFrame:
    """measure(models, n) for each size, a line as each finishes, then the table (also as CSV to `out`)."""
    rows = []
    for models, n in sizes:
        rows.append(measure(models, n))
        print(f"  {n} x {models} models: " + ", ".join(f"{k} {v}" for k, v in rows[-1].items() if k.endswith("_s")),
              flush=True)
    table = pd.DataFrame(rows)
    if out:
        table.to_csv(out, index=False)
    print(table.to_string(index=False))
    return table


if __name__ == "__main__":
    run_cli(main)

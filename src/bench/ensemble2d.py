"""Scale benchmark of the 2D ensemble tuner: `python -m src.bench.ensemble2d --images 32,128 --size 480x320`.

Fabricates, per size, a 2D image cache (its description, one entry per image: a blank one-channel
image and a car-like truth) and M out-of-fold runs in the project's formats (fold folders of
src.core.artifacts with float16 (K, H, W) OOF files at the image's size), with model-like
probabilities: the truth blurred and shifted, smooth noise, a few false-positive specks and a hole
(so the minimum component size and hole filling have something to do). Then it runs
`src.ensemble tune` on them in a fresh process and prints, per size: the OOF on disk, wall time and
its phases, evaluations, seconds per evaluation, the proxies' side and strides, their bytes, the peak
RSS growth, the exact scores, the best single model's score and what the tuner wrote; and, timed
with bench.metric's median_seconds over `--repeats`, index_map on one full image and one proxy
evaluation of every image (the search's unit of work).

Carvana's train set is 5088 images of 1918x1280 (25 GB of float16 OOF per model): `--size 1918x1280
--images 5088` is that scale and needs the disk for it; the tuner's memory follows --memory-gb
whatever the OOF's size (only the proxies and one image are held).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from scipy import ndimage

from src.bench.ensemble import int_list, measure_sizes
from src.bench.metric import _smooth_noise, median_seconds
from src.core.artifacts import CacheEntryFiles, FoldRecord, fold_dir, save_prediction
from src.core.errors import run_cli
from src.core.memory import reset_peak_rss, status_kib
from src.data.cache_entries import write_entry
from src.data.description import DatasetDescription, write_description
from src.data.image_cache import ImageCache
from src.data.synthetic import parse_size
from src.ensembling.ensemble_file import load_ensemble
from src.ensembling.oof2d import image_sources, proxy_strides, read_proxies
from src.ensembling.postprocess2d import index_map
from src.ensembling.search2d import ImageEvaluator
from src.ensembling.tune import TuneOptions, tune
from src.inference.runs import TrainedRun

VIEWS = 4  # images per car: a car's views share a fold, as Carvana's folds group them


def fake_truth(rng: np.random.Generator, height: int, width: int, n_classes: int) -> np.ndarray:
    """(H, W) uint8 index map: per class a smooth car-like blob in its own band of the width."""
    out = np.zeros((height, width), dtype=np.uint8)
    yy, xx = np.ogrid[:height, :width]
    band = width / n_classes
    for k in range(n_classes):
        cy, cx = rng.uniform(0.4, 0.6) * height, (k + rng.uniform(0.4, 0.6)) * band
        ry, rx = rng.uniform(0.2, 0.3) * height, rng.uniform(0.25, 0.4) * band
        level = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 + 0.3 * _smooth_noise(rng, (height, width))
        out[level < 1] = k + 1
    return out


def fake_image_probabilities(rng: np.random.Generator, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """A model-like float16 (K, H, W) prediction of an index map: blurred, shifted, noisy, with specks
    and a hole."""
    height, width = truth.shape
    side = min(height, width)
    out = np.empty((n_classes, height, width), dtype=np.float16)
    for k in range(n_classes):
        t = np.roll((truth == k + 1).astype(np.float32), tuple(int(s) for s in rng.integers(-2, 3, 2)), axis=(0, 1))
        p = ndimage.gaussian_filter(t, sigma=max(1.0, side / 80)) + 0.2 * _smooth_noise(rng, t.shape, cells=6) - 0.05
        r = max(1, side // 40)
        for _ in range(int(rng.integers(1, 4))):  # false-positive specks
            y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
            p[max(y - r, 0):y + r, max(x - r, 0):x + r] += 0.7
        ys, xs = np.nonzero(t)
        if len(ys):  # a hole inside the object
            i = int(rng.integers(0, len(ys)))
            p[max(ys[i] - r, 0):ys[i] + r, max(xs[i] - r, 0):xs[i] + r] -= 0.7
        out[k] = np.clip(p, 0, 1)
    return out


def fabricate(root: Path, images: int, models: int, size: tuple[int, int], folds: int, seed: int,
              n_classes: int = 1) -> list[Path]:
    """A 2D truth cache under root/cache and `models` OOF runs (m0, m1, ...) under root/runs, of `images`
    images of `size` (W, H); returns the run folders."""
    rng = np.random.default_rng(seed)
    width, height = size
    cache = root / "cache"
    labels = tuple(f"class{k + 1}" for k in range(n_classes))
    write_description(cache, DatasetDescription("bench2d", "carvana", "2d", ("gray",), labels,
                                                "binary" if n_classes == 1 else "index", "dice",
                                                "carvana_csv" if n_classes == 1 else "label_images", ".png"))
    keys = [f"car{i // VIEWS:04d}_{i % VIEWS + 1:02d}" for i in range(images)]
    fold_of = {key: (i // VIEWS) % folds for i, key in enumerate(keys)}
    runs = [root / "runs" / f"m{m}" for m in range(models)]
    blank = np.zeros((height, width, 1), dtype=np.uint8)
    for key in keys:
        truth = fake_truth(rng, height, width, n_classes)
        write_entry(CacheEntryFiles.of(cache, "train", key), blank, truth,
                    {"id": key, "group": key.split("_")[0], "stratum": "", "height": height, "width": width})
        for run in runs:
            fold = fold_dir(run.parent, run.name, fold_of[key])
            fold.oof_dir.mkdir(parents=True, exist_ok=True)
            save_prediction(fold.oof_dir, key, fake_image_probabilities(rng, truth, n_classes))
    for run in runs:
        for f in range(folds):
            fold = fold_dir(run.parent, run.name, f)
            fold.write_config(FoldRecord({"stage": "seg2d", "arch": "x", "fold": str(f), "cache_dir": str(cache),
                                          "threshold": 0.5},
                                         val_case_days=tuple(k for k in keys if fold_of[k] == f)))
            fold.weights.write_bytes(b"")
            fold.write_done({"best_score": None})
    return runs


def _primitives(root: Path, runs: list[Path], memory_gb: float, repeats: int) -> dict:
    """Median seconds of index_map with the written parameters on one full image, and of one proxy
    evaluation of every image (the proxies built as the tuner builds them)."""
    cache = ImageCache(root / "cache")
    params = load_ensemble(root / "ensemble.json").params
    loaded = [TrainedRun.load(r) for r in runs]
    sources = image_sources(loaded, cache, log=lambda line: None)
    _, strides = proxy_strides([s.shape for s in sources], len(runs), cache.description.n_classes, memory_gb)
    cases, _ = read_proxies(sources, cache, strides, [])
    probs, _, _ = sources[0].read(cache)
    evaluator = ImageEvaluator(cases, cache.description.n_classes)
    return {"index_map_s": median_seconds(lambda: index_map(probs, params), repeats),
            "proxy_eval_s": median_seconds(lambda: evaluator.score(params), repeats)}


def _tune_once(root: str, runs: list[str], passes: int, holdout: bool, memory_gb: float, repeats: int,
               workers: int = 1) -> dict:
    """Run the tuner in this (fresh) process with `workers`: wall time, phases, evaluations, peak RSS growth
    (this process's, and its workers' peaks summed); then the primitives (`repeats` 0: none)."""
    reset_peak_rss()
    base = status_kib("VmRSS")
    start = time.perf_counter()
    record = tune(TuneOptions(runs=tuple(map(Path, runs)), out=Path(root) / "ensemble.json",
                              cache_dir=Path(root) / "cache", holdout_folds=None if holdout else (), passes=passes,
                              memory_gb=memory_gb, workers=workers), log=lambda line: None)
    seconds = time.perf_counter() - start
    peak = (status_kib("VmHWM") - base) / 2**20
    search, scores = record["search"], record["scores"]
    return {"wall_s": seconds, "evaluations": search["evaluations"], "side": search["proxy"]["side"],
            "stride": "-".join(map(str, sorted(set(search["proxy"]["strides"])))),
            "proxy_mb": search["proxy"]["bytes"] / 2**20, "peak_rss_gb": peak + search["workers_peak_rss_gb"],
            **{f"{phase}_s": s for phase, s in search["seconds"].items()},
            "in_sample": scores["tuned_in_sample"]["score"],
            "held_out": scores.get("tuned_held_out", {}).get("score"),
            "best_single": max(s["score"] for s in scores["models"].values()),
            "written": scores["written"]["name"],
            **(_primitives(Path(root), [Path(r) for r in runs], memory_gb, repeats) if repeats else {})}


def bench(images: int, models: int, size: tuple[int, int], folds: int, passes: int, holdout: bool,
          memory_gb: float, repeats: int, seed: int, work: Path, workers: tuple[int, ...] = (1,)) -> dict:
    """One size: the tuner with workers[0] (its full row), then on the same OOF with each other worker count
    (its wall time, peak memory and wall-time ratio to the first, columns suffixed _w<N>)."""
    root = Path(tempfile.mkdtemp(prefix=f"ens2d_{images}x{models}_", dir=work))
    try:
        runs = fabricate(root, images, models, size, folds, seed)
        disk = sum(p.stat().st_size for p in (root / "runs").rglob("*.npy")) / 2**30
        results = []
        for i, n in enumerate(workers):
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                results.append(pool.submit(_tune_once, str(root), [str(r) for r in runs], passes, holdout, memory_gb,
                                           repeats if i == 0 else 0, n).result())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = results[0]
    rounded = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
    others = {}
    for n, other in zip(workers[1:], results[1:]):
        if other["in_sample"] != result["in_sample"] or other["held_out"] != result["held_out"]:
            raise RuntimeError(f"--workers {n} scored otherwise than --workers {workers[0]}")
        others.update({f"wall_s_w{n}": round(other["wall_s"], 1), f"peak_rss_gb_w{n}": round(other["peak_rss_gb"], 3),
                       f"ratio_w{n}": round(other["wall_s"] / result["wall_s"], 3)})
    return {"images": images, "size": f"{size[0]}x{size[1]}", "models": models, "oof_gb": round(disk, 3),
            "workers": workers[0], **rounded, "wall_s": round(result["wall_s"], 1),
            "s_per_eval": round(result["wall_s"] / result["evaluations"], 4), **others}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.bench.ensemble2d", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="32,128,512", help="comma-separated OOF image counts")
    parser.add_argument("--models", default="2", help="comma-separated model counts")
    parser.add_argument("--size", type=parse_size, default=(480, 320),
                        help="WxH of every image (Carvana's: 1918x1280; default 480x320)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=2, help="coordinate-descent passes (tune's default, 2)")
    parser.add_argument("--no-holdout", action="store_true", help="skip the held-out estimate over every fold")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="the tuner's memory budget (its default)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the timed primitives (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()), help="scratch folder")
    parser.add_argument("--workers", default="1", help="comma-separated worker counts, each on the same OOF "
                        "(the first's full row; the others' wall time and its ratio to the first)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (CSV)")
    args = parser.parse_args(argv)
    workers = tuple(int_list(args.workers, "--workers"))
    sizes = [(models, n) for models in int_list(args.models, "--models") for n in int_list(args.images, "--images")]
    measure_sizes(sizes, lambda models, n: bench(n, models, args.size, args.folds, args.passes, not args.no_holdout,
                                                 args.memory_gb, args.repeats, args.seed, args.work, workers), args.out)
    return 0


if __name__ == "__main__":
    run_cli(main)

"""Inference speed of a kernel ensemble, projected to Kaggle's hidden test:
`python -m src.bench.kernel --ensemble ensemble.json [--device cpu|cuda] [--gpu-class t4|p100]`.

Every run the ensemble needs predicts one synthetic case-day (`--slices` slices of `--height` x
`--width`, the real data's typical 266 x 266) through src.inference.predict.RunPredictor, with its
recorded folds and TTA, `--repeats` times (the median counts, after one warm-up). With
`--fold-sample K` only K folds are timed and the time is scaled to the run's fold count (cost is
linear in folds). Seconds per case-day are scaled linearly to `--case-day-slices` (144, the real
scans' usual depth) and to the hidden test: `--cases` 50 cases of `--days` 3 days, beside Kaggle's
9-hour limit. Measured: fp32 (and, on CUDA, fp16 autocast with the TTA flips batched). On the CPU
the GPU projection uses a stated speed ratio (GPU_CLASSES), an assumption and not a measurement;
Kaggle's CPU kernels (4 cores) are assumed twice as fast as 2 cores.

`--fabricate recipes/gpu_winner.toml --out DIR` first writes untrained runs of the recipe's models
(every fold, its config and randomly initialised weights, done markers) and an ensemble.json using
them (members with hflip TTA, the recipe's gate and crop), for the bundle size and the timing of a
1st-place-shaped ensemble without training it.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from src.core.artifacts import FoldRecord, RunDir
from src.core.checkpoint import save_checkpoint
from src.core.errors import DataError, run_cli
from src.data.volumes import CaseDay
from src.engine.stages import get_stage
from src.ensembling.ensemble_file import AuxiliaryRun, EnsembleMember, RunUse, load_ensemble, write_ensemble_file
from src.ensembling.params import EnsembleParams
from src.inference.predict import RunPredictor
from src.inference.runs import TrainedRun
from src.inference.settings import PredictSettings
from src.orchestration.recipes import load_recipe

KAGGLE_LIMIT_H = 9.0
# ASSUMPTION (not measured here): how much faster one Kaggle GPU runs these convnets than 2 cores
# of this machine's CPU in fp32, from peak throughput (T4: 8 TFLOPS fp32, 65 fp16 tensor cores;
# P100: 9 fp32, no tensor cores) against about 0.1 TFLOPS sustained on 2 CPU cores, discounted
# to what convnet inference reaches: (fp32 factor, fp16-autocast factor).
GPU_CLASSES = {"t4": (40.0, 100.0), "p100": (50.0, 60.0)}
KAGGLE_CPU_FACTOR = 2.0  # Kaggle's CPU kernel: 4 cores against this machine's 2 (assumption)


# ---- a fabricated ensemble ---------------------------------------------------------------------
def fabricate(recipe_path: str | Path, out: Path, log=print) -> Path:
    """Untrained runs of the recipe's models under out/runs and out/ensemble.json; returns the latter."""
    recipe = load_recipe(recipe_path)
    names = {}
    for model in recipe.models:
        stage = get_stage(model["stage"])
        fields = {f.name for f in dataclasses.fields(stage.config)}
        cfg = stage.config(**{k: v for k, v in model.items() if k in fields and k not in ("device", "encoder_weights")})
        run = RunDir(out / "runs" / model["name"])
        for fold in model.get("folds", [0]):
            folder = run.fold(fold)
            folder.path.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(int(fold) if str(fold).isdigit() else 0)
            net = stage.task(cfg, out / "cache").build_model()
            folder.write_config(FoldRecord(dataclasses.asdict(cfg), (), (), 0))
            save_checkpoint({"model": net.state_dict(), "epoch": 0}, folder.weights)
            folder.write_done({"best_score": None, "fabricated": True})
        names[model["name"]] = stage
        log(f"fabricated {model['name']} ({model['arch']}): {len(model.get('folds', [0]))} folds")
    ens = recipe.ensemble or {}
    aux = {key: AuxiliaryRun(str(out / "runs" / ens[key]), names[ens[key]].name, (), ()) if ens.get(key) else None
           for key in ("gate", "crop")}
    members = [EnsembleMember(n, str(out / "runs" / n), s.name, s.group, (), PredictSettings(("hflip",)))
               for n, s in names.items() if s.group]
    write_ensemble_file(out / "ensemble.json", members, [a for a in aux.values() if a], aux["gate"], aux["crop"],
                        EnsembleParams.plain_mean({m.name: m.group for m in members}), fabricated=True)
    return out / "ensemble.json"


# ---- timing ------------------------------------------------------------------------------------
def synthetic_case_day(slices: int, height: int, width: int, seed: int = 0) -> CaseDay:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 4000, size=(slices, height, width), dtype=np.uint16)
    return CaseDay("case0_day0", tuple(f"case0_day0_slice_{i + 1:04d}" for i in range(slices)), image, None)


def depth_scale(cfg, measured: int, target: int) -> float:
    """How much longer a case-day of `target` slices takes than one of `measured`: linear for 2.5D
    models (slice by slice), the ratio of sliding-window positions along depth for 3D ones (a
    window of depth D covers a shallower volume padded, so it costs a full window)."""
    roi = getattr(cfg, "sw_roi", "") or getattr(cfg, "roi", "")
    if not roi:
        return target / measured
    depth = int(str(roi).split(",")[-1])
    step = max(1, int(depth * (1 - getattr(cfg, "sw_overlap", 0.25))))
    windows = lambda d: 1 if d <= depth else -(-(d - depth) // step) + 1  # noqa: E731
    return windows(target) / windows(measured)


def time_run(use: RunUse, vol: CaseDay, device: str, repeats: int, fold_sample: int,
             target_slices: int, **precision) -> tuple[float, int, float]:
    """(median seconds for one case-day with all the run's folds, fold count, depth scale to the
    real case-day)."""
    predictor = RunPredictor(TrainedRun.load(use.path), use.folds, "test", use.tta, torch.device(device), **precision)
    n_folds = len(predictor.folds)
    scale = depth_scale(predictor.folds[0].task.cfg, vol.shape[0], target_slices)
    if fold_sample and fold_sample < n_folds:
        predictor.folds = predictor.folds[:fold_sample]
    cuda = predictor.device.type == "cuda"
    times = []
    for i in range(repeats + 1):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        predictor.predict(vol)
        if cuda:
            torch.cuda.synchronize()
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - start)
    del predictor
    if cuda:
        torch.cuda.empty_cache()
    timed = min(fold_sample, n_folds) if fold_sample else n_folds
    return statistics.median(times) * n_folds / timed, n_folds, scale


def bench(opts: argparse.Namespace, log=print) -> dict:
    ensemble = load_ensemble(opts.ensemble)
    vol = synthetic_case_day(opts.slices, opts.height, opts.width)
    cuda = opts.device == "cuda"
    rows = []
    for use in ensemble.run_uses().values():
        fp32, n_folds, scale = time_run(use, vol, opts.device, opts.repeats, opts.fold_sample,
                                         opts.case_day_slices, amp=False, batch_tta=False)
        fp16 = time_run(use, vol, opts.device, opts.repeats, opts.fold_sample, opts.case_day_slices,
                        amp=True, batch_tta=True)[0] \
            if cuda else None
        rows.append({"run": Path(use.path).name, "folds": n_folds, "tta": len(use.tta), "fp32": fp32 * scale,
                     "fp16": None if fp16 is None else fp16 * scale})
        log(f"  {rows[-1]['run']}: {rows[-1]['fp32']:.2f} s per case-day fp32"
            + ("" if fp16 is None else f", {rows[-1]['fp16']:.2f} fp16 batched TTA"))
    n_case_days = opts.cases * opts.days
    total32 = sum(r["fp32"] for r in rows)
    total16 = sum(r["fp16"] for r in rows) if cuda else None
    lines = [f"{'run':<28} {'folds':>5} {'tta':>3} {'s/case-day fp32':>16} {'fp16 batched':>13}"]
    for r in rows:
        lines.append(f"{r['run']:<28} {r['folds']:>5} {r['tta']:>3} {r['fp32']:>16.2f} "
                     f"{'-' if r['fp16'] is None else format(r['fp16'], '.2f'):>13}")
    lines.append(f"{'total':<38} {total32:>16.2f} {'-' if total16 is None else format(total16, '.2f'):>13}")
    where = torch.cuda.get_device_name(0) if cuda else f"CPU, {torch.get_num_threads()} threads"
    lines.append(f"measured on {where}, {opts.slices} slices of {opts.height}x{opts.width}, scaled to "
                 f"{opts.case_day_slices} slices per case-day (2.5D: linearly; 3D: by sliding-window positions); hidden test: {opts.cases} cases x {opts.days} days = "
                 f"{n_case_days} case-days; Kaggle's limit {KAGGLE_LIMIT_H:.0f} h")
    hours = lambda seconds: seconds * n_case_days / 3600  # noqa: E731
    projection = {}
    if cuda:
        projection["measured_gpu_fp16_h"] = hours(total16)
        lines.append(f"projected on this GPU: {hours(total32):.2f} h fp32, {hours(total16):.2f} h fp16 batched TTA")
    else:
        f32, f16 = GPU_CLASSES[opts.gpu_class]
        projection = {"cpu_here_h": hours(total32), "kaggle_cpu_h": hours(total32) / KAGGLE_CPU_FACTOR,
                      f"{opts.gpu_class}_fp32_h": hours(total32) / f32, f"{opts.gpu_class}_fp16_h": hours(total32) / f16}
        lines.append(f"projected: this CPU {projection['cpu_here_h']:.1f} h; Kaggle CPU kernel (4 cores, assumed "
                     f"{KAGGLE_CPU_FACTOR:.0f}x) {projection['kaggle_cpu_h']:.1f} h")
        lines.append(f"projected on a {opts.gpu_class.upper()} (ASSUMPTION: {f32:.0f}x this CPU in fp32, {f16:.0f}x "
                     f"in fp16; not measured): {projection[f'{opts.gpu_class}_fp32_h']:.2f} h fp32, "
                     f"{projection[f'{opts.gpu_class}_fp16_h']:.2f} h fp16 (limit {KAGGLE_LIMIT_H:.0f} h)")
    print("\n".join(lines))
    return {"rows": rows, "projection": projection}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.bench.kernel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ensemble", help="ensemble.json (default with --fabricate: the fabricated one)")
    parser.add_argument("--fabricate", help="a recipe: write untrained runs of its models and an ensemble first")
    parser.add_argument("--out", help="with --fabricate: the folder for its runs and ensemble.json")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--gpu-class", default="t4", choices=sorted(GPU_CLASSES))
    parser.add_argument("--slices", type=int, default=8, help="slices of the timed synthetic case-day")
    parser.add_argument("--height", type=int, default=266)
    parser.add_argument("--width", type=int, default=266)
    parser.add_argument("--case-day-slices", type=int, default=144)
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--fold-sample", type=int, default=0, help="time K folds per run, scale to all (0: all)")
    opts = parser.parse_args(argv)
    for name in ("slices", "height", "width", "case_day_slices", "cases", "days", "repeats"):
        if getattr(opts, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} {getattr(opts, name)}: must be at least 1")
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda: no CUDA device here")
    if opts.fabricate:
        out = Path(opts.out or tempfile.mkdtemp(prefix="fabricated_"))
        opts.ensemble = opts.ensemble or fabricate(opts.fabricate, out)
    if not opts.ensemble:
        raise DataError("--ensemble: required (or --fabricate RECIPE)")
    bench(opts)
    return 0


if __name__ == "__main__":
    run_cli(main)

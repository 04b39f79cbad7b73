"""What the empty-slice gate and the detector crop add to one segmenter: `python -m src.bench.gate_crop --work DIR`.

On a small synthetic dataset (generated under DIR if missing, folds and cache too) it trains fold 0
of a 2.5D segmenter, a slice classifier and a YOLO crop detector (each reused when its done.json
exists), then scores the segmenter's out-of-fold probabilities with the competition metric through
the ensemble's own post-processing (src.ensembling.postprocess.postprocess), untuned: threshold 0.5; gate =
the classifier's presence >= --gate-threshold, or the 1st place's pixel rule (the segmenter as its
own classifier: more than 12 pixels above 0.6); crop = everything outside the detector's box zeroed.
Prints one row per variant: plain, gate, pixel-rule gate, crop, gate + crop.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from src.core.artifacts import FoldDir, fold_dir
from src.core.errors import run_cli
from src.data.folds import make_folds
from src.data.layout import load_prediction
from src.data.preparation import prepare
from src.data.synthetic import generate
from src.data.volumes import VolumeCache
from src.engine.run import train
from src.engine.stages import get_stage
from src.ensembling.params import EnsembleParams
from src.ensembling.postprocess import postprocess
from src.metrics.competition import score_volumes

VARIANTS = {  # name -> EnsembleParams overrides on the plain single-model mean
    "plain": {},
    "gate (classifier)": {"gate_threshold": "cls"},
    "gate (pixel rule 12 px > 0.6)": {"gate_pixels": (12,) * 3, "gate_prob": (0.6,) * 3},
    "crop (detector box)": {"crop": True},
    "gate (classifier) + crop": {"gate_threshold": "cls", "crop": True},
}


def prepare_data(work: Path, cases: int, size: int, slices: int, seed: int) -> None:
    if not (work / "data" / "train.csv").exists():
        generate(work / "data", cases=cases, seed=seed, sizes=[(size, size)], slices=[slices], workers=1)
    if not (work / "folds.csv").exists():
        make_folds(work / "data", n_folds=2, seed=seed).to_csv(work / "folds.csv", index=False)
    prepare(work / "data", work / "cache", workers=1)


def train_stage(stage: str, name: str, work: Path, **fields) -> FoldDir:
    """Fold 0 of a stage under work/runs/<name>, reused when already done."""
    cfg = get_stage(stage).config(name=name, fold="0", data_dir=str(work / "data"), cache_dir=str(work / "cache"),
                                  folds_csv=str(work / "folds.csv"), out=str(work / "runs"), **fields)
    fold = fold_dir(work / "runs", name, 0)
    if not fold.is_done():
        started = time.perf_counter()
        train(cfg)
        print(f"{name}: trained in {time.perf_counter() - started:.0f} s")
    return fold


def score_variants(work: Path, seg: FoldDir, cls: FoldDir, det: FoldDir, gate_threshold: float) -> pd.DataFrame:
    cache = VolumeCache(work / "cache")
    seg_oof, cls_oof, det_oof = seg.oof_files(), cls.oof_files(), det.oof_files()
    data = []
    for cd in seg.read_config().val_case_days:
        data.append((cd, load_prediction(seg_oof[cd]).astype(np.float32), load_prediction(cls_oof[cd]),
                     load_prediction(det_oof[cd])["box"], np.asarray(cache.load(cd).mask) > 0))
    rows = []
    for variant, overrides in VARIANTS.items():
        values = {k: ((gate_threshold,) * 3 if v == "cls" else v) for k, v in overrides.items()}
        params = EnsembleParams(weights={"seg": (1.0,) * 3}, groups={"seg": "2d"}, **values)
        result = score_volumes((cd, postprocess(probs, gate, params, box), truth) for cd, probs, gate, box, truth in data)
        rows.append({"variant": variant, "score": result.score, "dice": result.dice, "hausdorff": result.hausdorff})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.bench.gate_crop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for data, cache, folds and runs")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--size", type=int, default=128, help="synthetic image width = height")
    parser.add_argument("--slices", type=int, default=48, help="slices per case-day")
    parser.add_argument("--img-size", type=int, default=128, help="model input size of every stage")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the segmenter and the classifier")
    parser.add_argument("--det-epochs", type=int, default=20)
    parser.add_argument("--samples-per-epoch", type=int, default=0)
    parser.add_argument("--seg-arch", default="unet_tiny")
    parser.add_argument("--cls-arch", default="cls_tiny")
    parser.add_argument("--det-arch", default="yolo26n")
    parser.add_argument("--gate-threshold", type=float, default=0.5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    prepare_data(args.work, args.cases, args.size, args.slices, args.seed)
    common = dict(img_size=args.img_size, device=args.device, workers=0, seed=args.seed)
    shared = dict(common, epochs=args.epochs, samples_per_epoch=args.samples_per_epoch, batch_size=16, lr=2e-3)
    seg = train_stage("seg2d", "seg", args.work, arch=args.seg_arch, **shared)
    cls = train_stage("cls", "cls", args.work, arch=args.cls_arch, **shared)
    det = train_stage("det", "det", args.work, arch=args.det_arch, epochs=args.det_epochs, batch_size=16, **common)
    table = score_variants(args.work, seg, cls, det, args.gate_threshold)
    det_done, cls_done = det.read_done(), cls.read_done()
    print(f"classifier mean AP {cls_done['best_score']:.3f}; detector crop recall {det_done['metrics']['val_crop_recall']:.3f}, "
          f"crop area {det_done['metrics']['val_crop_area']:.3f}, fallback {det_done['metrics']['val_fallback']:.2f}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    run_cli(main)

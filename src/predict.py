"""Stage `predict`: class-probability volumes of a trained run, `python -m src.predict --run runs/NAME --split oof`.

Each fold model is rebuilt from its saved config.json by its stage's task class and loaded from
best.pt. `--split oof` predicts every case-day with the fold model that did not see it (so a
TTA prediction can replace the training-time OOF); `--split test` predicts the test split (cached
first) with the mean of the fold models, or with the fold-"all" model (`--folds all`). Output:
`<run>/pred_<split>/<case_day>.npy` float16 at the original resolution (segmenters: (Z, 3, H, W);
classifiers: (Z, 3) presence; detectors: `<case_day>.json` {"box": [y0, y1, x0, x1]}), and
predict.json, written last, listing what was predicted and how.

TTA (`--tta hflip,vflip`) averages the plain prediction with one per listed flip: the volume is
flipped in-plane, predicted, and the output flipped back. `--gate runs/CLS` zeroes the slices
(per class) whose classifier presence probability is below `--gate-threshold`; `--gate-rule N:p`
zeroes those where at most N pixels of the run's own probabilities exceed p.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from src.core.atomic import save_npy_atomic, write_json_atomic
from src.core.errors import DataError, run_cli
from src.data.volumes import CaseDay, VolumeCache, default_cache_dir
from src.engine.trainer import select_device
from src.ensembling.postprocess import pixel_gate
from src.train import stage_module

# stage of a run's config -> "module:TaskClass"; the task has build_model() and
# predict_volume(model, vol, device, box=None, batch_size=None). Imported only when used.
TASKS = {
    "seg2d": "src.engine.seg_task:Seg2DTask",
    "seg3d": "src.engine.seg3d_task:Seg3DTask",
    "cls": "src.engine.cls_task:ClsTask",
    "det": "src.engine.detector:DetTask",
}
SPLITS = ("oof", "test")
FLIPS = {"hflip": -1, "vflip": -2}  # in-plane axis flipped: W, H
MANIFEST = "predict.json"
FOLD_RE = re.compile(r"^fold(\d+|all)$")

Prediction = np.ndarray | dict  # probabilities, or a detector's {"box": [...]}


# ---- runs on disk ------------------------------------------------------------------------------
def task_class(stage: str) -> type:
    if stage not in TASKS:
        raise DataError(f"stage {stage!r} has no prediction task (known: {', '.join(TASKS)})")
    module, name = TASKS[stage].split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class FoldInfo:
    """One trained fold of a run: its folder, saved config dict and validation case-days."""

    fold: str
    path: Path
    config: dict
    val_case_days: tuple[str, ...]

    @property
    def stage(self) -> str:
        return self.config.get("stage", "seg2d")


def run_folds(run_dir: str | Path) -> dict[str, FoldInfo]:
    """The folds of a run that have best.pt, keyed "0", "1", ..., "all"."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run folder not found")
    out = {}
    for path in sorted(run_dir.iterdir()):
        m = FOLD_RE.match(path.name)
        if not m or not (path / "best.pt").is_file():
            continue
        try:
            saved = json.loads((path / "config.json").read_text())
            out[m.group(1)] = FoldInfo(m.group(1), path, saved["config"], tuple(saved.get("val_case_days", ())))
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise DataError(f"{path / 'config.json'}: unreadable run config ({exc})") from None
    if not out:
        raise DataError(f"{run_dir}: no fold*/best.pt (train the run first)")
    stages = {info.stage for info in out.values()}
    if len(stages) > 1:
        raise DataError(f"{run_dir}: folds of different stages {sorted(stages)}")
    return dict(sorted(out.items(), key=lambda kv: (kv[0] == "all", int(kv[0]) if kv[0] != "all" else 0)))


def select_folds(run_dir: str | Path, folds: str | list[str] | None, split: str) -> list[FoldInfo]:
    """Folds to predict with: the given list, "all" (the fold-all model), or by default every numbered fold."""
    available = run_folds(run_dir)
    if folds is None or folds == "":
        names = [f for f in available if f != "all"] or ["all"]
    else:
        names = folds.split(",") if isinstance(folds, str) else [str(f) for f in folds]
    missing = [f for f in names if f not in available]
    if missing:
        raise DataError(f"{run_dir}: no trained fold {missing[0]} (has {', '.join(available)})")
    if split == "oof" and "all" in names:
        raise DataError(f"{run_dir}: the fold-all model saw every case-day, it has no out-of-fold predictions")
    return [available[f] for f in names]


def case_day_folds(run_dir: str | Path) -> dict[str, int]:
    """case-day -> the numbered fold that validated it."""
    return {cd: int(info.fold) for info in run_folds(run_dir).values() if info.fold != "all"
            for cd in info.val_case_days}


def prediction_files(run_dir: str | Path, split: str) -> dict[str, Path]:
    """case-day -> prediction file: `pred_<split>/` when complete (has predict.json), else for
    oof the training-time fold*/oof/ files."""
    run_dir = Path(run_dir)
    folder = run_dir / f"pred_{split}"
    if (folder / MANIFEST).is_file():
        manifest = json.loads((folder / MANIFEST).read_text())
        return {cd: _existing(folder, cd) for cd in manifest["case_days"]}
    if split != "oof":
        return {}
    files = {}
    for info in run_folds(run_dir).values():
        for path in sorted((info.path / "oof").glob("*.*")):
            if path.suffix in (".npy", ".json"):
                files[path.stem] = path
    return files


def _existing(folder: Path, case_day: str) -> Path:
    for suffix in (".npy", ".json"):
        if (folder / f"{case_day}{suffix}").is_file():
            return folder / f"{case_day}{suffix}"
    raise DataError(f"{folder}: {case_day} is listed in {MANIFEST} but has no prediction file")


def prediction_manifest(run_dir: str | Path, split: str) -> dict | None:
    path = Path(run_dir) / f"pred_{split}" / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def load_prediction(path: Path) -> Prediction:
    try:
        return json.loads(path.read_text()) if path.suffix == ".json" else np.load(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable prediction ({exc})") from None


def split_predictions(run_dir: str | Path, split: str, case_days: list[str]) -> dict[str, Prediction]:
    """Saved predictions of a run (a classifier gate, a detector's boxes) for the given case-days."""
    files = prediction_files(run_dir, split)
    missing = [cd for cd in case_days if cd not in files]
    if missing:
        raise DataError(f"{run_dir}: no {split} prediction for {missing[0]} "
                        f"(run python -m src.predict --run {run_dir} --split {split})")
    return {cd: load_prediction(files[cd]) for cd in case_days}


# ---- models ------------------------------------------------------------------------------------
def build_config(info: FoldInfo):
    """The fold's config dataclass, rebuilt from config.json by its stage's CONFIG."""
    config_cls = stage_module(info.stage).CONFIG
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(info.config) - known)
    if unknown:
        raise DataError(f"{info.path / 'config.json'}: field(s) {', '.join(unknown)} unknown to {config_cls.__name__}")
    return config_cls(**info.config)


@dataclass
class FoldModel:
    """A loaded fold model and the task that feeds it whole case-days."""

    info: FoldInfo
    task: object
    model: nn.Module
    device: torch.device

    @classmethod
    def load(cls, info: FoldInfo, device: torch.device, cache_dir: Path) -> FoldModel:
        task = task_class(info.stage)(build_config(info), cache_dir)
        model = task.build_model()
        state = torch.load(info.path / "best.pt", map_location="cpu", weights_only=True)["model"]
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise DataError(f"{info.path / 'best.pt'}: weights do not fit the config's model "
                            f"({str(exc).splitlines()[0]})") from None
        model.to(device).eval()
        if getattr(task.cfg, "channels_last", False):
            model = model.to(memory_format=torch.channels_last)
        return cls(info, task, model, device)

    def predict(self, vol: CaseDay, box=None, batch_size: int | None = None) -> Prediction:
        kwargs = {k: v for k, v in (("box", box), ("batch_size", batch_size)) if v is not None}
        accepted = inspect.signature(self.task.predict_volume).parameters
        unsupported = [k for k in kwargs if k not in accepted]
        if unsupported:
            raise DataError(f"{self.info.path}: the {self.info.stage} task does not take {unsupported[0]} "
                            "(no --crop / --batch-size for this run)")
        amp = self.device.type == "cuda" and getattr(self.task.cfg, "amp", True)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=amp):
            return self.task.predict_volume(self.model, vol, self.device, **kwargs)


def flip_volume(vol: CaseDay, axis: int) -> CaseDay:
    """The case-day's image mirrored along an in-plane axis (-1: W, -2: H); the mask is left out."""
    return dataclasses.replace(vol, image=np.ascontiguousarray(np.flip(vol.image, axis)), mask=None)


def flip_box(box, axis: int, height: int, width: int) -> list[int]:
    y0, y1, x0, x1 = (int(v) for v in box)
    return [y0, y1, width - x1, width - x0] if axis == -1 else [height - y1, height - y0, x0, x1]


def unflip(output: Prediction, axis: int, height: int, width: int) -> Prediction:
    """Map a prediction on a flipped volume back: images are flipped, (Z, 3) presence is kept."""
    if isinstance(output, dict):
        return {**output, "box": flip_box(output["box"], axis, height, width)} if "box" in output else output
    return np.flip(output, axis) if output.ndim >= 3 else output


def merge(outputs: list[Prediction]) -> Prediction:
    """Mean of probability arrays (float32); union of detector boxes."""
    if isinstance(outputs[0], dict):
        boxes = np.array([o["box"] for o in outputs])
        return {"box": [int(boxes[:, 0].min()), int(boxes[:, 1].max()), int(boxes[:, 2].min()), int(boxes[:, 3].max())]}
    total = np.array(outputs[0], dtype=np.float32)
    for o in outputs[1:]:
        total += o
    return total / len(outputs)


def predict_tta(fold: FoldModel, vol: CaseDay, tta: tuple[str, ...] = (), box=None,
                batch_size: int | None = None) -> Prediction:
    """The plain prediction averaged with one per flip in `tta` (flipped input, output flipped back)."""
    _, height, width = vol.shape
    outputs = [fold.predict(vol, box, batch_size)]
    for name in tta:
        axis = FLIPS[name]
        flipped_box = None if box is None else flip_box(box, axis, height, width)
        outputs.append(unflip(fold.predict(flip_volume(vol, axis), flipped_box, batch_size), axis, height, width))
    return merge(outputs) if len(outputs) > 1 else outputs[0]


def parse_tta(tta: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    names = tuple(t.strip() for t in (tta.split(",") if isinstance(tta, str) else tta or ()) if t.strip())
    unknown = [t for t in names if t not in FLIPS]
    if unknown or len(set(names)) != len(names):
        raise DataError(f"--tta {','.join(names)}: expected distinct names from {', '.join(FLIPS)}")
    return names


class RunPredictor:
    """The chosen fold models of one run, loaded once: predict(vol) is their mean, with flip TTA."""

    def __init__(self, run_dir: str | Path, folds: str | list[str] | None = None, split: str = "test",
                 tta=(), device: str = "auto", batch_size: int | None = None, cache_dir: str | Path = "cache"):
        self.run_dir = Path(run_dir)
        self.tta = parse_tta(tta)
        self.batch_size = batch_size
        self.device = select_device(device)
        chosen = select_folds(run_dir, folds, split)
        self.folds = [FoldModel.load(info, self.device, Path(cache_dir)) for info in chosen]
        self.stage = self.folds[0].info.stage

    @property
    def fold_names(self) -> list[str]:
        return [f.info.fold for f in self.folds]

    def predict(self, vol: CaseDay, box=None) -> Prediction:
        return merge([predict_tta(f, vol, self.tta, box, self.batch_size) for f in self.folds])

    def predict_oof(self, vol: CaseDay, box=None) -> Prediction:
        """The prediction of the fold model that validated this case-day."""
        fold = next((f for f in self.folds if vol.case_day in f.info.val_case_days), None)
        if fold is None:
            raise DataError(f"{self.run_dir}: no chosen fold validated {vol.case_day}")
        return predict_tta(fold, vol, self.tta, box, self.batch_size)


# ---- gates -------------------------------------------------------------------------------------
def parse_gate_rule(rule: str) -> tuple[int, float]:
    """"12:0.6" -> (12, 0.6): present when more than 12 pixels exceed 0.6."""
    try:
        pixels, prob = rule.split(":")
        return int(pixels), float(prob)
    except ValueError:
        raise DataError(f"--gate-rule {rule!r}: expected PIXELS:PROB, e.g. 12:0.6") from None


def apply_gate(probs: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Zero (in place) the (slice, class) planes that the (Z, 3) gate marks empty."""
    probs *= present[:, :, None, None]
    return probs


def gate_presence(probs: np.ndarray, cls_probs: np.ndarray | None = None, threshold: float = 0.5,
                  rule: tuple[int, float] | None = None) -> np.ndarray:
    """(Z, 3) bool kept by the gate: classifier presence >= threshold, and/or the pixel rule
    (more than N pixels of `probs` above p)."""
    present = np.ones(probs.shape[:2], dtype=bool)
    if cls_probs is not None:
        cls_probs = np.asarray(cls_probs)
        if cls_probs.shape != probs.shape[:2]:
            raise DataError(f"gate: presence of shape {cls_probs.shape}, expected {probs.shape[:2]}")
        present &= cls_probs >= threshold
    if rule is not None:
        pixels, prob = rule
        present &= pixel_gate(probs, [pixels] * probs.shape[1], [prob] * probs.shape[1])
    return present


# ---- the stage ---------------------------------------------------------------------------------
def resolve_cache_dir(info: FoldInfo, data_dir: str | Path | None, cache_dir: str | Path | None) -> Path:
    """--cache-dir, else the cache of --data-dir, else the run's own."""
    if cache_dir:
        return Path(cache_dir)
    if data_dir:
        return default_cache_dir(data_dir)
    return Path(info.config.get("cache_dir") or default_cache_dir(info.config.get("data_dir", "data")))


def split_case_days(split: str, folds: list[FoldInfo], cache: VolumeCache, data_dir: Path) -> list[str]:
    """oof: the folds' validation case-days; test: the cached test split (prepared now if needed)."""
    if split == "oof":
        wanted = {cd for f in folds for cd in f.val_case_days}
        cached = cache.case_days("train")
        missing = sorted(wanted - set(cached))
        if missing:
            raise DataError(f"{cache.root / 'train'}: validation case-day {missing[0]} is not cached "
                            "(run python -m src.prepare)")
        return [cd for cd in cached if cd in wanted]
    from src.data.preparation import prepare

    prepare(data_dir, cache.root, split="test", workers=1)
    return cache.case_days("test")


def predict_run(run_dir: str | Path, split: str = "oof", folds: str | list[str] | None = None, tta=(),
                data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                out: str | Path | None = None, batch_size: int | None = None, device: str = "auto",
                gate: str | Path | None = None, gate_threshold: float = 0.5, gate_rule: str | None = None,
                crop: str | Path | None = None) -> Path:
    """Predict a split with a run and write `<out or run/pred_split>/<case_day>.npy|json` + predict.json."""
    if split not in SPLITS:
        raise DataError(f"--split {split!r}: expected one of {', '.join(SPLITS)}")
    run_dir = Path(run_dir)
    chosen = select_folds(run_dir, folds, split)
    cache_dir = resolve_cache_dir(chosen[0], data_dir, cache_dir)
    data_dir = Path(data_dir or chosen[0].config.get("data_dir", "data"))
    cache = VolumeCache(cache_dir)
    case_days = split_case_days(split, chosen, cache, data_dir)
    predictor = RunPredictor(run_dir, [f.fold for f in chosen], split, tta, device, batch_size, cache_dir)
    gate_probs = split_predictions(gate, split, case_days) if gate else None
    boxes = split_predictions(crop, split, case_days) if crop else {}
    rule = parse_gate_rule(gate_rule) if gate_rule else None
    out_dir = Path(out) if out else run_dir / f"pred_{split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # incomplete until rewritten
    cache_split = "train" if split == "oof" else "test"
    for cd in case_days:
        vol = cache.load(cd, cache_split)
        box = boxes[cd]["box"] if cd in boxes else None
        pred = predictor.predict_oof(vol, box) if split == "oof" else predictor.predict(vol, box)
        if isinstance(pred, dict):
            write_json_atomic(out_dir / f"{cd}.json", pred)
            continue
        if pred.ndim == 4 and (gate_probs is not None or rule is not None):
            cls_probs = None if gate_probs is None else gate_probs[cd]
            pred = apply_gate(np.array(pred, dtype=np.float32), gate_presence(pred, cls_probs, gate_threshold, rule))
        save_npy_atomic(out_dir / f"{cd}.npy", np.asarray(pred, dtype=np.float16))
    write_json_atomic(out_dir / MANIFEST, {
        "run": str(run_dir), "split": split, "stage": predictor.stage, "folds": predictor.fold_names,
        "tta": list(predictor.tta), "gate": str(gate) if gate else None,
        "gate_threshold": gate_threshold if gate else None, "gate_rule": gate_rule, "crop": str(crop) if crop else None, "case_days": case_days})
    print(f"predict: {run_dir.name} {split}: {len(case_days)} case-days -> {out_dir}")
    return out_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="run folder, e.g. runs/unet_r18")
    parser.add_argument("--split", choices=SPLITS, default="oof")
    parser.add_argument("--folds", default=None, help="comma-separated folds or 'all' (default: every numbered fold)")
    parser.add_argument("--tta", default="", help="comma-separated flips: hflip, vflip")
    parser.add_argument("--data-dir", type=Path, default=None, help="dataset root (default: the run's)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache root (default: that of --data-dir, else the run's)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/pred_<split>)")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (default: the run's)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--gate", type=Path, default=None, help="classifier run whose presence gates the slices")
    parser.add_argument("--gate-threshold", type=float, default=0.5, help="presence probability kept (default 0.5)")
    parser.add_argument("--gate-rule", default=None,
                        help="PIXELS:PROB, keep a slice-class with more than PIXELS above PROB")
    parser.add_argument("--crop", type=Path, default=None, help="detector run whose boxes crop the model input")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    predict_run(args.run, args.split, args.folds, args.tta, args.data_dir, args.cache_dir, args.out,
                args.batch_size, args.device, args.gate, args.gate_threshold, args.gate_rule, args.crop)
    return 0


if __name__ == "__main__":
    run_cli(main)

"""Crop detector: the `det` stage of src.train, an ultralytics YOLO trained on boxes derived from the masks.

`python -m src.train --stage det --fold 0 --arch yolo26n --img-size 256`

Two classes per slice: "organs", the bounding box of the union of the three organ masks, and
"body", the box of the largest component of the Otsu-thresholded slice (src.data.boxes.body_box).
The slices of the train folds (every `slice_step`-th) and of the validation fold are exported to a
YOLO dataset inside the run folder (8-bit 3-channel PNGs: the 2.5D stack z-s, z, z+s normalised by
the case-day's intensity window, or the slice repeated with --stride 0; labels as normalised xywh)
and YOLO trains from its yaml (never from downloaded .pt weights), offline (see
src.models.detector.ultralytics_offline), in fp32 (ultralytics' AMP check downloads weights).

A case-day's crop: detect on every `predict_step`-th slice, take the union of the "organs" boxes
over the slices, or of the "body" boxes when no slice has organs, grow it by `margin` x its size
plus `margin_px` on each side and clip to the image; nothing detected: the whole image
("source": "fallback"). Validation writes oof/<case_day>.json {"box": [y0, y1, x0, x1], "source",
"class", "detections"} and scores the crop by its recall (fraction of the truth organ pixels
inside the box, mean over case-days: the checkpoint score) and its area fraction (the cost).

Run folder runs/<name>/fold<k>/: config.json, yolo/ (ultralytics' own folder: weights/best.pt,
last.pt, results.csv), best.pt ({"model": state_dict} of the DetectionModel, like every stage),
log.csv (ultralytics' per-epoch results), oof/, oof_scores.csv, done.json (last).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import yaml

from src.core.atomic import atomic_path, write_json_atomic, write_text_atomic
from src.core.errors import DataError
from src.data.boxes import (Box, body_box, box_area_fraction, box_from_xyxy, box_recall, expand_box, mask_box,
                            union_boxes, yolo_xywh)
from src.data.samples import StackSpec, intensity_window, normalise
from src.data.volumes import CaseDay, VolumeCache
from src.engine.config import TrainConfig
from src.engine.trainer import Evaluation, prepared_cache, select_device, split_case_days
from src.models.detector import keep_torch_state, ultralytics_offline, yolo_yaml
from src.models.registry import create_model, get_arch

DET_CLASSES = ("organs", "body")
# TrainConfig fields the YOLO trainer has no use for: setting one is an error, not silently ignored.
UNUSED_FIELDS = ("loss", "ema", "accum_steps", "samples_per_epoch", "channels_last", "encoder_weights", "threshold",
                 "schedule", "amp", "bn_momentum")


@dataclass(frozen=True)
class DetConfig(TrainConfig):
    """The crop detector. lr, weight_decay, warmup_epochs, patience (0: off), batch_size, epochs,
    seed and workers go to ultralytics (AdamW, cosine decay); amp stays off."""

    stage: str = "det"
    arch: str = "yolo26n"
    epochs: int = 30
    batch_size: int = 16
    weight_decay: float = 5e-4
    amp: bool = False
    img_size: int = 256  # YOLO's imgsz (a multiple of 32)
    stride: int = 2  # channels are slices z-s, z, z+s; 0: the slice itself three times
    slice_step: int = 1  # export every k-th slice of the case-days
    predict_step: int = 1  # detect on every k-th slice of a case-day
    conf: float = 0.25  # detection confidence kept
    margin: float = 0.1  # crop margin on each side, as a fraction of the box's size ...
    margin_px: int = 4  # ... plus this many pixels
    mosaic: float = 1.0  # ultralytics' mosaic augmentation probability
    keep_dataset: bool = False  # keep the exported YOLO dataset after training


def check_config(cfg: DetConfig) -> None:
    """One-line errors for an arch of another stage, a bad value, or a field the detector does not use."""
    try:
        stage = get_arch(cfg.arch).stage
    except KeyError as exc:
        raise DataError(f"--arch: {exc.args[0]}") from None
    if stage != "det":
        raise DataError(f"--arch {cfg.arch} is a {stage} arch; the det stage needs one of the YOLO archs")
    defaults = {f.name: f.default for f in dataclasses.fields(DetConfig)}
    changed = [name for name in UNUSED_FIELDS if getattr(cfg, name) != defaults[name]]
    if changed:
        raise DataError(f"--{changed[0].replace('_', '-')} does not apply to the det stage")
    if cfg.img_size % 32 or cfg.img_size <= 0:
        raise DataError(f"--img-size {cfg.img_size}: YOLO needs a positive multiple of 32")
    if cfg.stride < 0 or cfg.slice_step < 1 or cfg.predict_step < 1 or cfg.margin < 0 or cfg.margin_px < 0:
        raise DataError("config: --stride, --margin and --margin-px must be >= 0, --slice-step and --predict-step >= 1")


def yolo_device(device: torch.device) -> str:
    return "cpu" if device.type == "cpu" else str(device.index or 0)


# ---- images and labels -------------------------------------------------------------------------
def render_slice(vol: CaseDay, z: int, spec: StackSpec, window: tuple[float, float]) -> np.ndarray:
    """The detector's input for slice z: (H, W, 3) uint8, channel 1 is slice z itself."""
    stack = normalise(vol.image[spec.indices(z, vol.shape[0])], window)
    if stack.shape[0] == 1:
        stack = np.repeat(stack, 3, axis=0)
    return np.ascontiguousarray((stack * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0))


def slice_boxes(mask: np.ndarray, image: np.ndarray) -> list[tuple[int, Box]]:
    """(class index, box) training targets of one slice: organs (if any), body (if found)."""
    found = [(0, mask_box(mask)), (1, body_box(image[..., 1]))]
    return [(c, box) for c, box in found if box is not None]


def export_dataset(cache: VolumeCache, splits: dict[str, list[str]], folder: Path, spec: StackSpec,
                   step: int) -> Path:
    """Write images/<split>/*.png, labels/<split>/*.txt and data.yaml (last); return data.yaml.
    An empty validation split validates on the training images (fold "all")."""
    for split, case_days in splits.items():
        for cd in case_days:
            vol = cache.load(cd)
            window, (_, height, width) = intensity_window(vol.image), vol.shape
            for z in range(0, vol.shape[0], step):
                image = render_slice(vol, z, spec, window)
                lines = [f"{c} " + " ".join(f"{v:.6f}" for v in yolo_xywh(box, height, width))
                         for c, box in slice_boxes(vol.mask[z], image)]
                stem = f"{cd}_{z:04d}"
                with atomic_path(folder / "images" / split / f"{stem}.png", suffix=".png") as tmp:
                    if not cv2.imwrite(str(tmp), image):
                        raise DataError(f"{tmp}: cannot write the detector image")
                write_text_atomic(folder / "labels" / split / f"{stem}.txt", "".join(f"{line}\n" for line in lines))
    data = {"path": str(folder.resolve()), "train": "images/train",
            "val": "images/val" if splits.get("val") else "images/train", "names": dict(enumerate(DET_CLASSES))}
    write_text_atomic(folder / "data.yaml", yaml.safe_dump(data, sort_keys=False))
    return folder / "data.yaml"


# ---- case-day boxes ----------------------------------------------------------------------------
def case_day_box(detections: list[dict], height: int, width: int, margin: float = 0.0, margin_px: int = 0) -> dict:
    """A case-day's crop from its per-slice detections ({"z", "class", "box", "conf"}): the union of
    the organs boxes, else of the body boxes, with the margin; the whole image when there is none."""
    for name in DET_CLASSES:
        found = union_boxes(d["box"] for d in detections if d["class"] == name)
        if found is not None:
            return {"box": list(expand_box(found, height, width, margin, margin_px)), "source": "detected",
                    "class": name, "detections": detections}
    return {"box": [0, height, 0, width], "source": "fallback", "class": None, "detections": detections}


class DetTask:
    """Builds the detector from the registry and turns its detections into case-day crops."""

    def __init__(self, cfg: DetConfig, cache_dir: str | Path):
        check_config(cfg)
        self.cfg = cfg
        self.cache_dir = cache_dir
        self.cache = VolumeCache(cache_dir)
        self.spec = StackSpec(3 if cfg.stride else 1, max(cfg.stride, 1))
        self._predictor: tuple[nn.Module, object] | None = None

    def build_model(self) -> nn.Module:
        model = create_model(self.cfg.arch, classes=len(DET_CLASSES))
        model.names = dict(enumerate(DET_CLASSES))
        return model

    def predictor(self, model: nn.Module, device: torch.device):
        """ultralytics' DetectionPredictor on this model (its own letterbox and post-processing), cached."""
        if self._predictor is None or self._predictor[0] is not model:
            ultralytics_offline()
            from ultralytics.models.yolo.detect import DetectionPredictor

            predictor = DetectionPredictor(overrides={
                "conf": self.cfg.conf, "imgsz": self.cfg.img_size, "device": yolo_device(device), "mode": "predict",
                "save": False, "verbose": False, "rect": True, "batch": self.cfg.batch_size})
            with keep_torch_state():
                predictor.setup_model(model, verbose=False)
            self._predictor = (model, predictor)
        return self._predictor[1]

    def detect(self, model: nn.Module, vol: CaseDay, device: torch.device, batch_size: int | None = None) -> list[dict]:
        """Every detection on every `predict_step`-th slice: {"z", "class", "box", "conf"}."""
        predictor = self.predictor(model, device)
        window, (depth, height, width) = intensity_window(vol.image), vol.shape
        zs = list(range(0, depth, self.cfg.predict_step))
        step = batch_size or self.cfg.batch_size
        out = []
        for start in range(0, len(zs), step):
            chunk = zs[start:start + step]
            results = predictor(source=[render_slice(vol, z, self.spec, window) for z in chunk])
            for z, result in zip(chunk, results):
                boxes = result.boxes
                for c, conf, xyxy in zip(boxes.cls.tolist(), boxes.conf.tolist(), boxes.xyxy.tolist()):
                    out.append({"z": z, "class": DET_CLASSES[int(c)], "conf": round(conf, 4),
                                "box": list(box_from_xyxy(xyxy, height, width))})
        return out

    def predict_volume(self, model: nn.Module, vol: CaseDay, device: torch.device,
                       box=None, batch_size: int | None = None) -> dict:
        """The case-day's crop {"box": [y0, y1, x0, x1], "source", "class", "detections"}."""
        if box is not None:
            raise DataError("the detector predicts on whole images; it takes no crop box")
        _, height, width = vol.shape
        return case_day_box(self.detect(model, vol, device, batch_size), height, width, self.cfg.margin, self.cfg.margin_px)

    def evaluate(self, model: nn.Module, case_days: list[str], device: torch.device, oof_dir: Path) -> Evaluation:
        """Crops of the validation case-days as oof/<case_day>.json; score: mean crop recall."""
        rows = []
        for cd in case_days:
            vol = self.cache.load(cd)
            pred = self.predict_volume(model, vol, device)
            write_json_atomic(oof_dir / f"{cd}.json", pred)
            rows.append({"case_day": cd, "source": pred["source"], "class": pred["class"],
                         "crop_recall": box_recall(vol.mask, pred["box"]),
                         "crop_area": box_area_fraction(pred["box"], *vol.shape[1:])})
        table = pd.DataFrame(rows)
        recall = table["crop_recall"]
        score = float(recall.mean()) if recall.notna().any() else float("nan")
        metrics = {"val_score": score, "val_crop_recall": score, "val_crop_recall_min": float(recall.min()),
                   "val_crop_area": float(table["crop_area"].mean()),
                   "val_fallback": float((table["source"] == "fallback").mean())}
        return Evaluation(score, metrics, table)


# ---- the stage ---------------------------------------------------------------------------------
def load_detector(fold_dir: Path, cache_dir: str | Path, device: torch.device) -> tuple[DetTask, nn.Module]:
    """A trained fold: its task (from config.json) and model (from best.pt), on `device`, in eval mode."""
    try:
        cfg = DetConfig(**json.loads((fold_dir / "config.json").read_text())["config"])
        state = torch.load(fold_dir / "best.pt", map_location="cpu", weights_only=True)["model"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise DataError(f"{fold_dir}: not a trained detector fold ({type(exc).__name__}: {exc})") from None
    task = DetTask(cfg, cache_dir)
    model = task.build_model()
    model.load_state_dict(state)
    return task, model.to(device).eval()


def predict_boxes(run_dir: str | Path, cache_dir: str | Path, case_days: list[str], split: str = "test",
                  folds: str | list[str] | None = None, device: str = "auto") -> dict[str, dict]:
    """case-day -> crop {"box", "source"}. split "oof": each cached train case-day by the fold that
    validated it; "test": the cached test case-days, the union of the chosen folds' boxes."""
    from src.predict import select_folds

    torch_device = select_device(device)
    loaded = [(info, *load_detector(info.path, cache_dir, torch_device)) for info in select_folds(run_dir, folds, split)]
    cache = VolumeCache(cache_dir)
    out = {}
    for cd in case_days:
        vol = cache.load(cd, "train" if split == "oof" else "test")
        chosen = [(t, m) for info, t, m in loaded if split != "oof" or cd in info.val_case_days]
        if not chosen:
            raise DataError(f"{run_dir}: no chosen fold validated {cd}")
        with torch.no_grad():
            preds = [task.predict_volume(model, vol, torch_device) for task, model in chosen]
        detected = [p for p in preds if p["source"] == "detected"]
        out[cd] = {"box": list(union_boxes(p["box"] for p in preds)),
                   "source": "detected" if detected else "fallback"}
    return out


def _prepare_run_dir(run_dir: Path, cfg: DetConfig, resume: bool) -> None:
    """Like the trainer: --resume needs the same config; a fresh run replaces the old folder."""
    saved = run_dir / "config.json"
    if resume and saved.exists() and json.loads(saved.read_text())["config"] != dataclasses.asdict(cfg):
        raise DataError(f"{saved}: --resume with a different config")
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def train_yolo(cfg: DetConfig, data_yaml: Path, run_dir: Path, device: torch.device, resume: bool) -> Path:
    """Train (or resume from yolo/weights/last.pt); return ultralytics' best.pt."""
    ultralytics = ultralytics_offline()
    last = run_dir / "yolo" / "weights" / "last.pt"
    with keep_torch_state():
        if resume and last.exists():
            model = ultralytics.YOLO(str(last))
            model.train(resume=True)
        else:
            model = ultralytics.YOLO(yolo_yaml(cfg.arch), task="detect")
            model.train(data=str(data_yaml), epochs=cfg.epochs, imgsz=cfg.img_size, batch=cfg.batch_size,
                        device=yolo_device(device), seed=cfg.seed, deterministic=True, workers=cfg.workers,
                        amp=False, project=str(run_dir.resolve()), name="yolo", exist_ok=True, plots=False,
                        val=True, pretrained=False, optimizer="AdamW", lr0=cfg.lr, weight_decay=cfg.weight_decay,
                        warmup_epochs=cfg.warmup_epochs, cos_lr=True, patience=cfg.patience, mosaic=cfg.mosaic,
                        verbose=False)
    return Path(model.trainer.best)


def save_state_dict(ultralytics_best: Path, target: Path) -> None:
    """Convert ultralytics' checkpoint to the project's best.pt {"model": state_dict}."""
    from ultralytics.nn.tasks import load_checkpoint

    model, ckpt = load_checkpoint(ultralytics_best)
    with atomic_path(target, suffix=".pt") as tmp:
        torch.save({"model": model.state_dict(), "epoch": ckpt.get("epoch")}, tmp)


def _promote(run_dir: Path, evaluation: Evaluation) -> None:
    final, staging = run_dir / "oof", run_dir / "oof.staging"
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    with atomic_path(run_dir / "oof_scores.csv") as tmp:
        evaluation.per_case_day.to_csv(tmp, index=False)


def run(cfg: DetConfig, resume: bool) -> float:
    """Train one fold of the crop detector (the `det` stage of src.train); return the crop recall."""
    check_config(cfg)
    cache_dir, case_days = prepared_cache(cfg)
    task = DetTask(cfg, cache_dir)
    train_cds, val_cds = split_case_days(cfg, case_days)
    if not train_cds:
        raise DataError("no case-day left to train on (check --fold, --exclude and the folds file)")
    device = select_device(cfg.device)
    run_dir = Path(cfg.out) / cfg.run_name / f"fold{cfg.fold}"
    if resume and (run_dir / "done.json").exists():
        score = json.loads((run_dir / "done.json").read_text())["best_score"]
        return float("nan") if score is None else score
    _prepare_run_dir(run_dir, cfg, resume)
    ultralytics = ultralytics_offline()
    write_json_atomic(run_dir / "config.json", {
        "config": dataclasses.asdict(cfg), "seed": cfg.seed, "train_case_days": train_cds, "val_case_days": val_cds,
        "world_size": 1, "versions": {"torch": torch.__version__, "ultralytics": ultralytics.__version__}})
    data_yaml = run_dir / "dataset" / "data.yaml"
    if not data_yaml.exists():
        data_yaml = export_dataset(task.cache, {"train": train_cds, "val": val_cds}, run_dir / "dataset",
                                   task.spec, cfg.slice_step)
    save_state_dict(train_yolo(cfg, data_yaml, run_dir, device, resume), run_dir / "best.pt")
    log = pd.read_csv(run_dir / "yolo" / "results.csv")
    write_text_atomic(run_dir / "log.csv", log.to_csv(index=False))
    score, metrics = float("nan"), {}
    if val_cds:
        task, model = load_detector(run_dir, cache_dir, device)  # the path every later prediction takes
        staging = run_dir / "oof.staging"
        shutil.rmtree(staging, ignore_errors=True)
        with torch.no_grad():
            evaluation = task.evaluate(model, val_cds, device, staging)
        _promote(run_dir, evaluation)
        score, metrics = evaluation.score, evaluation.metrics
        print("det: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if not cfg.keep_dataset:
        shutil.rmtree(run_dir / "dataset", ignore_errors=True)
    write_json_atomic(run_dir / "done.json", {
        "best_score": None if np.isnan(score) else score, "metrics": {k: (None if np.isnan(v) else v) for k, v in metrics.items()},
        "epochs_run": len(log)})
    return score


CONFIG = DetConfig

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

Run folder runs/<name>/fold<k>/ (written as fold<k>.staging/, which replaces it when complete, under
the fold's lock: src.engine.fold_writer): config.json, yolo/ (ultralytics' own folder: weights/best.pt,
last.pt, results.csv), best.pt ({"model": state_dict} of the DetectionModel, like every stage),
log.csv (ultralytics' per-epoch results), oof/, oof_scores.csv, done.json (last). Ultralytics' own
output (its configuration, layer table, a progress bar per batch) goes to yolo.log beside yolo/; the
console gets one line per epoch, as from every stage (src.engine.progress).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import sys
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import yaml

from src.core.artifacts import FoldDir, FoldRecord, fold_dir
from src.core.atomic import atomic_path, write_text_atomic
from src.core.checkpoint import load_checkpoint, save_checkpoint
from src.core.device import select_device
from src.core.errors import DataError
from src.data.boxes import (
    Box,
    body_box,
    box_area_fraction,
    box_from_xyxy,
    box_recall,
    expand_box,
    mask_box,
    union_boxes,
    yolo_xywh,
)
from src.data.samples import StackSpec, intensity_window, normalise
from src.data.volumes import CaseDay, VolumeCache
from src.engine.config import DetConfig
from src.engine.fold_writer import Plan, fold_lock, open_staging, plan_training
from src.engine.progress import epoch_line
from src.engine.stages import StageSpec, register_stage
from src.engine.trainer import Evaluation, split_case_days
from src.models.detector import keep_torch_state, ultralytics_offline, yolo_yaml
from src.models.registry import create_model

DET_CLASSES = ("organs", "body")


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
    An empty validation split validates on the training images (fold "all"). data.yaml names no `path`:
    ultralytics takes the yaml's folder as the root, so a kept dataset (--keep-dataset) stays valid
    when fold<k>.staging/ becomes fold<k>/."""
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
    data = {"train": "images/train",
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

    def evaluate(self, model: nn.Module, case_days: list[str], device: torch.device,
                 save: Callable[[str, dict], object]) -> Evaluation:
        """Crops of the validation case-days as OOF box records. Score: the mean over case-days with
        organs of the detected recall, the crop recall of a detected box and 0 for the whole-image
        fallback (which covers everything but found nothing): a detector that detects nothing scores 0."""
        rows = []
        for cd in case_days:
            vol = self.cache.load(cd)
            pred = self.predict_volume(model, vol, device)
            save(cd, pred)
            rows.append({"case_day": cd, "source": pred["source"], "class": pred["class"],
                         "crop_recall": box_recall(vol.mask, pred["box"]),
                         "crop_area": box_area_fraction(pred["box"], *vol.shape[1:])})
        table = pd.DataFrame(rows)
        recall = table["crop_recall"]
        table["detected_recall"] = recall.where(table["source"] == "detected", 0.0).where(recall.notna())
        detected = table["detected_recall"]
        score = float(detected.mean()) if detected.notna().any() else float("nan")
        metrics = {"val_score": score, "val_detected_recall": score,
                   "val_crop_recall": float(recall.mean()) if recall.notna().any() else float("nan"),
                   "val_crop_recall_min": float(recall.min()),
                   "val_crop_area": float(table["crop_area"].mean()),
                   "val_fallback": float((table["source"] == "fallback").mean())}
        return Evaluation(score, metrics, table)


# ---- the stage ---------------------------------------------------------------------------------
def save_state_dict(ultralytics_best: Path, target: Path) -> None:
    """Convert ultralytics' checkpoint to the project's best.pt {"model": state_dict}."""
    from ultralytics.nn.tasks import load_checkpoint

    model, ckpt = load_checkpoint(ultralytics_best)
    save_checkpoint({"model": model.state_dict(), "epoch": ckpt.get("epoch")}, target)


@contextlib.contextmanager
def ultralytics_output_to(path: Path):
    """Ultralytics' log and progress bars into `path` for the block; yields the console's stdout."""
    console = sys.stdout
    handlers = [h for h in logging.getLogger("ultralytics").handlers if isinstance(h, logging.StreamHandler)]
    with open(path, "a") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        previous = [h.setStream(sink) for h in handlers]
        try:
            yield console
        finally:
            for handler, stream in zip(handlers, previous):
                handler.setStream(stream)


def train_yolo(cfg: DetConfig, data_yaml: Path, fold: FoldDir, device: torch.device) -> Path:
    """Train YOLO from its yaml on the fold's own exported dataset, in an empty training folder; return
    ultralytics' best.pt (written by this process). Never ultralytics' resume: it unpickles the old
    last.pt and, when it judges a checkpoint not resumable, falls back to its default dataset (a download)."""
    ultralytics = ultralytics_offline()
    shutil.rmtree(fold.yolo_dir, ignore_errors=True)
    with keep_torch_state(), ultralytics_output_to(fold.yolo_dir.with_suffix(".log")) as console:
        model = ultralytics.YOLO(yolo_yaml(cfg.arch), task="detect")
        model.add_callback("on_fit_epoch_end", lambda t: print(epoch_line(
            t.epoch, t.epochs, sum(float(v) for v in (t.tloss or {}).values()), t.fitness, t.epoch_time or 0.0),
            file=console, flush=True))
        model.train(data=str(data_yaml.resolve()), epochs=cfg.epochs, imgsz=cfg.img_size, batch=cfg.batch_size,
                    device=yolo_device(device), seed=cfg.seed, deterministic=True, workers=cfg.workers,
                    amp=False, project=str(fold.path.resolve()), name=fold.yolo_dir.name, exist_ok=True,
                    plots=False, val=True, pretrained=False, optimizer="AdamW", lr0=cfg.lr,
                    weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs, cos_lr=True,
                    patience=cfg.patience, mosaic=cfg.mosaic, verbose=False)
    return Path(model.trainer.best)


class YoloTrainer:
    """Fits one fold of the detector with ultralytics' own loop, then validates it like every stage:
    the project's best.pt, log.csv, OOF crops and done.json in the fold folder."""

    def __init__(self, task: DetTask, all_case_days: list[str]):
        self.task, self.cfg = task, task.cfg
        self.train_cds, self.val_cds = split_case_days(self.cfg, all_case_days)
        if not self.train_cds:
            raise DataError("no case-day left to train on (check --fold, --exclude and the folds file)")
        self.device = select_device(self.cfg.device)
        self.fold = fold_dir(self.cfg.out, self.cfg.run_name, self.cfg.fold)

    def fit(self, resume: bool = False) -> float:
        """Train; return the detected recall on the validation fold (NaN for fold 'all'). With `resume`
        a done fold returns its score and an unfinished one is retrained from its own data (YOLO's
        state is not resumed: see train_yolo)."""
        with fold_lock(self.fold):
            plan = plan_training(self.fold, self.cfg, resume)
            score = self.fold.read_done()["best_score"] if plan is Plan.DONE else self._train()
        return float("nan") if score is None else score

    def _train(self) -> float | None:
        """Train into a fresh staging folder, validate, mark it done and make it the fold."""
        cfg = self.cfg
        ultralytics = ultralytics_offline()
        fold = open_staging(self.fold, Plan.FRESH)
        fold.write_config(FoldRecord(dataclasses.asdict(cfg), tuple(self.train_cds), tuple(self.val_cds), cfg.seed, 1,
                                     {"torch": torch.__version__, "ultralytics": ultralytics.__version__}))
        data_yaml = export_dataset(self.task.cache, {"train": self.train_cds, "val": self.val_cds},
                                   fold.det_dataset, self.task.spec, cfg.slice_step)
        save_state_dict(train_yolo(cfg, data_yaml, fold, self.device), fold.weights)
        log = pd.read_csv(fold.yolo_results)
        fold.write_log(log)
        score, metrics = None, {}
        if self.val_cds:
            model = self.task.build_model()  # reloaded from best.pt: the path every later prediction takes
            model.load_state_dict(load_checkpoint(fold.weights)["model"])
            model.to(self.device).eval()
            fold.begin_oof()
            with torch.no_grad():
                evaluation = self.task.evaluate(model, self.val_cds, self.device, fold.stage_oof)
            fold.promote_oof(evaluation.per_case_day)
            score = None if np.isnan(evaluation.score) else evaluation.score
            metrics = evaluation.metrics
            print("det: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if not cfg.keep_dataset:
            shutil.rmtree(fold.det_dataset, ignore_errors=True)
        fold.write_done({"best_score": score, "metrics": {k: (None if np.isnan(v) else v) for k, v in metrics.items()},
                         "epochs_run": len(log)})
        self.fold.commit_staging()
        return score


register_stage(StageSpec("det", DetConfig, DetTask, "box", None, YoloTrainer,
                         "YOLO crop detector: a box record per case-day"))

"""Prediction of a whole split with one run: `predict_run(PredictOptions(...))` (the predict stage).

`oof` predicts every case-day with the fold model that did not see it (so a TTA prediction can
replace the training-time OOF); `test` predicts the cached test split (prepared first) with the
mean of the chosen fold models, or with the fold-"all" model. Output: one prediction per case-day
in the run's prediction folder (segmenters (Z, 3, H, W) float16, classifiers (Z, 3), detectors a
box record) and the manifest, written last, saying what was predicted and how.

A run of 2D images (its cache's description says dims "2d") predicts `oof` only: each cached image
with the fold model that validated it, (K, H, W) float16 at its size, so a TTA OOF can feed the 2D
ensemble search; its test images are not cached (Carvana's 100,064 would take 740 GB) and are
predicted where they lie by `python -m src.submit`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from src.core.artifacts import Prediction, PredictionDir
from src.core.device import check_device_name, select_device
from src.core.errors import DataError
from src.core.outputs import check_output
from src.data.image_cache import ImageCache, is_image_cache
from src.data.image_samples import ImageInput
from src.data.preparation import prepare
from src.data.volumes import CaseDay, VolumeCache
from src.inference.fold_model import FoldModel, ModelInput
from src.inference.gating import gated
from src.inference.runs import TrainedFold, TrainedRun
from src.inference.settings import PredictSettings
from src.inference.tta import merge, parse_tta, predict_tta

SPLITS = ("oof", "test")


class RunPredictor:
    """The chosen fold models of one run, loaded once on `device` (resolved by `select_device`):
    predict(vol) is their mean, with flip TTA.

    On CUDA, by default: fp16 autocast (`amp` None: each fold's config), the TTA flips batched into
    shared forward passes (`batch_tta`), and each fold's weights on the GPU only while it predicts
    (`offload`). On the CPU nothing of that changes a prediction: fp32, one flip after the other."""

    def __init__(self, run: TrainedRun, folds: str | list[str] | tuple[str, ...] | None = None, split: str = "test",
                 tta=(), device: torch.device = torch.device("cpu"), batch_size: int | None = None,
                 cache_dir: str | Path = "cache",
                 amp: bool | None = None, batch_tta: bool | None = None, offload: bool | None = None):
        self.run = run
        self.tta = parse_tta(tta)
        self.batch_size = batch_size
        self.device = device
        cuda = self.device.type == "cuda"
        self.batch_tta = cuda if batch_tta is None else batch_tta
        self.folds = [FoldModel.load(info, self.device, Path(cache_dir), amp, cuda if offload is None else offload)
                      for info in run.select(folds, split)]
        self.stage = self.folds[0].info.stage

    @property
    def fold_names(self) -> list[str]:
        return [f.info.fold for f in self.folds]

    def predict(self, vol: ModelInput, box=None) -> Prediction:
        """A case-day's (Z, 3, H, W) probabilities, or a 2D image's (K, H, W)."""
        return merge([predict_tta(f, vol, self.tta, box, self.batch_size, self.batch_tta) for f in self.folds])

    def predict_oof(self, vol: ModelInput, box=None) -> Prediction:
        """The prediction of the fold model that validated this case-day (or cached 2D image)."""
        fold = next((f for f in self.folds if vol.name in f.info.val_case_days), None)
        if fold is None:
            raise DataError(f"{self.run.path}: no chosen fold validated {vol.name}")
        return predict_tta(fold, vol, self.tta, box, self.batch_size, self.batch_tta)


Auxiliary = Callable[[str, CaseDay], Prediction]  # (crop or gate run path, case-day) -> its prediction


def predict_member(predictor: RunPredictor, settings: PredictSettings, vol: CaseDay, auxiliary: Auxiliary,
                   oof: bool = False) -> Prediction:
    """One case-day predicted as `settings` say, the one path for prediction, submission and benchmarks:
    the crop run's box first, then the model (its chosen folds' mean, or with `oof` the fold that
    validated the case-day), then the gate (the gate run's presence and/or the pixel rule)."""
    box = auxiliary(settings.crop, vol)["box"] if settings.crop else None
    pred = predictor.predict_oof(vol, box) if oof else predictor.predict(vol, box)
    if settings.gates and not isinstance(pred, dict) and pred.ndim == 4:
        presence = auxiliary(settings.gate, vol) if settings.gate else None
        pred = gated(pred, presence, settings.gate_threshold, settings.rule)
    return pred


@dataclass(frozen=True)
class PredictOptions:
    """What `python -m src.predict` was asked: the run, the split, and how to predict it."""

    run: Path = field(metadata={"help": "run folder, e.g. runs/unet_r18"})
    split: str = field(default="oof", metadata={"choices": SPLITS})
    folds: str | None = field(default=None, metadata={
        "help": "comma-separated folds or 'all' (default: every numbered fold)"})
    tta: tuple[str, ...] = field(default=(), metadata={"help": "comma-separated flips: hflip, vflip"})
    data_dir: Path | None = field(default=None, metadata={"help": "dataset root (default: the run's)"})
    cache_dir: Path | None = field(default=None, metadata={
        "help": "cache root (default: that of --data-dir, else the run's)"})
    out: Path | None = field(default=None, metadata={"help": "output folder (default: <run>/pred_<split>)"})
    batch_size: int | None = field(default=None, metadata={"help": "slices per forward pass (default: the run's)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    gate: Path | None = field(default=None, metadata={"help": "classifier run whose presence gates the slices"})
    gate_threshold: float = field(default=0.5, metadata={"help": "presence probability kept (default 0.5)"})
    gate_rule: str | None = field(default=None, metadata={
        "help": "PIXELS:PROB, keep a slice-class with more than PIXELS above PROB"})
    crop: Path | None = field(default=None, metadata={"help": "detector run whose boxes crop the model input"})
    allow_incomplete: bool = field(default=False, metadata={
        "help": "use folds without their done marker (killed or unfinished runs), with a warning"})

    def __post_init__(self):
        if self.split not in SPLITS:
            raise DataError(f"--split {self.split!r}: expected one of {', '.join(SPLITS)}")
        object.__setattr__(self, "tta", parse_tta(self.tta))
        if self.batch_size is not None and self.batch_size < 1:
            raise DataError(f"--batch-size {self.batch_size}: must be at least 1")
        self.settings  # noqa: B018 - validates the gate threshold and rule now
        check_device_name(self.device)

    @property
    def settings(self) -> PredictSettings:
        return PredictSettings(self.tta, str(self.crop) if self.crop else None, str(self.gate) if self.gate else None,
                               self.gate_threshold, self.gate_rule or None)


def split_case_days(split: str, folds: list[TrainedFold], cache: VolumeCache, data_dir: Path) -> list[str]:
    """oof: the folds' validation case-days; test: the cached test split (prepared now if needed)."""
    if split == "oof":
        wanted = {cd for f in folds for cd in f.val_case_days}
        cached = cache.case_days("train")
        missing = sorted(wanted - set(cached))
        if missing:
            raise DataError(f"{cache.root / 'train'}: validation case-day {missing[0]} is not cached "
                            "(run python -m src.prepare)")
        return [cd for cd in cached if cd in wanted]
    prepare(data_dir, cache.root, split="test", workers=1)
    return cache.case_days("test")


def predict_run(opts: PredictOptions) -> Path:
    """Predict a split with a run; write every case-day's prediction, then the manifest."""
    device = select_device(opts.device)  # before any work
    run = TrainedRun.load(opts.run, opts.allow_incomplete)
    settings = opts.settings
    chosen = run.select(opts.folds, opts.split)
    cache_dir = run.cache_dir(opts.data_dir, opts.cache_dir)
    if is_image_cache(cache_dir):
        return _predict_images(opts, run, chosen, cache_dir, device)
    cache = VolumeCache(cache_dir)
    case_days = split_case_days(opts.split, chosen, cache, run.data_dir(opts.data_dir))
    predictor = RunPredictor(run, [f.fold for f in chosen], opts.split, settings.tta, device,
                             opts.batch_size, cache_dir)
    saved = {path: TrainedRun.load(path, opts.allow_incomplete).predictions(opts.split, case_days)
             for path in settings.runs()}
    cache_split = "train" if opts.split == "oof" else "test"
    predictions = ((cd, predict_member(predictor, settings, cache.load(cd, cache_split),
                                       lambda path, vol: saved[path][vol.case_day], oof=opts.split == "oof"))
                   for cd in case_days)
    out = _write_predictions(opts, run, predictor, case_days, predictions, (opts.gate, opts.crop, cache_dir))
    print(f"predict: {run.name} {opts.split}: {len(case_days)} case-days -> {out}")
    return out


def _write_predictions(opts: PredictOptions, run: TrainedRun, predictor: RunPredictor, names: list[str],
                       predictions, inputs: tuple) -> Path:
    """The prediction folder (--out, else the run's): checked against `inputs` first, each (name, prediction)
    saved into a staging folder, the manifest last; a failure leaves the previous folder as it was."""
    out = PredictionDir(opts.out) if opts.out else run.dir.predictions(opts.split)
    check_output(out.path, "--out", (opts.run, *inputs), run.data_dir(opts.data_dir), (out.manifest_path.name,),
                 "prediction folder")
    out.begin()
    try:
        for name, prediction in predictions:
            out.save(name, prediction)
        out.commit({"run": str(opts.run), "split": opts.split, "stage": predictor.stage,
                    "folds": predictor.fold_names, **opts.settings.to_dict(), "case_days": names})
    finally:
        out.discard()
    return out.path


def _predict_images(opts: PredictOptions, run: TrainedRun, chosen: list[TrainedFold], cache_dir: Path,
                    device: torch.device) -> Path:
    """The OOF of a run of 2D images: each cached validation image by the fold model that validated it."""
    if opts.split != "oof":
        raise DataError(f"--split {opts.split}: {run.path} segments 2D images, whose test images are predicted "
                        "where they lie by python -m src.submit (they are not cached)")
    given = [flag for flag, value in (("--gate", opts.gate), ("--crop", opts.crop), ("--gate-rule", opts.gate_rule))
             if value]
    if given:
        raise DataError(f"{given[0]}: an option of the GI slices; {run.path} segments 2D images")
    cache = ImageCache(cache_dir)
    wanted = {key for f in chosen for key in f.val_case_days}
    keys = [key for key in cache.table()["key"] if key in wanted]
    missing = sorted(wanted - set(keys))
    if missing:
        raise DataError(f"{cache_dir / 'train'}: validation image {missing[0]} is not cached (run python -m src.prepare)")
    predictor = RunPredictor(run, [f.fold for f in chosen], "oof", opts.tta, device, opts.batch_size, cache_dir)
    predictions = ((key, predictor.predict_oof(ImageInput.of(key, *cache.load(key)))) for key in keys)
    out = _write_predictions(opts, run, predictor, keys, predictions, (cache_dir,))
    print(f"predict: {run.name} oof: {len(keys)} images{', tta ' + ','.join(opts.tta) if opts.tta else ''} -> {out}")
    return out

"""The submission: predict the test split with a tuned ensemble and write the competition CSV (on 2D
data: src.ensembling.submission2d, chosen by `submit`, with a 2D ensemble file or the runs' plain mean).

`python -m src.submit --ensemble ensemble.json --data-dir DIR --out submissions/submission.csv`

Every run of ensemble.json (and its classifier gate and detector, if any) predicts each test
case-day through src.predict (its recorded folds and TTA), src.ensembling.postprocess.apply_ensemble turns the
probabilities into masks, and each (slice, class) becomes a row `id,class,predicted` (RLE over (H, W)
in C order). Rows follow sample_submission.csv when it has rows, else slice order with classes in
the order large_bowel, small_bowel, stomach. The file is validated (every row present once, every
RLE decodes inside its image) before it is written atomically.

Kaggle's development phase has an empty test/: then the stage says so and writes the sample
submission with empty predictions (if there is one). `--allow-train-fallback N` instead runs on the
first N train case-days as a pseudo test split (rows carry their train ids), to try a kernel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.core.atomic import atomic_path, check_writable
from src.core.device import check_device_name, select_device
from src.core.errors import DataError
from src.core.outputs import check_output
from src.data import rle
from src.data.layout import (
    CLASSES,
    check_id_class_rows,
    max_image_pixels_field,
    read_csv_text,
    read_slice,
    scan_split,
)
from src.data.volumes import CaseDay
from src.ensembling.ensemble_file import Ensemble, load_ensemble
from src.ensembling.postprocess import apply_ensemble
from src.ensembling.submission2d import submit_images
from src.inference.predict import RunPredictor, predict_member
from src.inference.runs import TrainedRun
from src.inference.tta import parse_tta
from src.metrics.scoring2d import image_dataset

COLUMNS = ["id", "class", "predicted"]


# ---- volumes straight from the layout ----------------------------------------------------------
def read_volume(rows: pd.DataFrame) -> CaseDay:
    """One case-day from its scan_split rows (slice order), images only."""
    first = rows.iloc[0]
    height, width = int(first["height"]), int(first["width"])
    image = np.stack([read_slice(path, height, width) for path in rows["path"]])
    return CaseDay(first["case_day"], tuple(rows["id"]), image, None)


def pseudo_test_index(data_dir: Path, n: int, max_pixels: int) -> pd.DataFrame:
    """The slices of the first n train case-days, standing in for an empty test split."""
    index = scan_split(data_dir, "train", max_pixels)
    if index.empty:
        raise DataError(f"{data_dir / 'train'}: no train case-days to fall back on")
    keep = list(dict.fromkeys(index["case_day"]))[:n]
    return index[index["case_day"].isin(keep)].reset_index(drop=True)


# ---- prediction --------------------------------------------------------------------------------
class EnsemblePredictor:
    """Loads every run the ensemble needs once (`Ensemble.run_uses`); masks(vol) -> (Z, 3, H, W) bool."""

    def __init__(self, ensemble: Ensemble, device: torch.device = torch.device("cpu"), batch_size: int | None = None,
                 runs_root: str | Path | None = None, allow_incomplete: bool = False):
        self.ensemble = ensemble
        self.runs_root = Path(runs_root) if runs_root else None
        self.predictors = {}
        for use in ensemble.run_uses().values():
            run = TrainedRun.load(self._path(use.path), allow_incomplete)
            self.predictors[use.path] = RunPredictor(run, use.folds, "test", use.tta, device, batch_size)

    def _path(self, path: str) -> Path:
        return self.runs_root / Path(path).name if self.runs_root else Path(path)

    def masks(self, vol: CaseDay) -> np.ndarray:
        memo: dict[str, object] = {}  # a gate or crop run used by several members predicts once

        def auxiliary(path: str, vol: CaseDay):
            if path not in memo:
                memo[path] = self.predictors[path].predict(vol)
            return memo[path]

        probs = {m.name: predict_member(self.predictors[m.path], m.predict, vol, auxiliary)
                 for m in self.ensemble.members}
        gate = auxiliary(self.ensemble.gate.path, vol) if self.ensemble.gate else None
        box = auxiliary(self.ensemble.crop.path, vol)["box"] if self.ensemble.crop else None
        return apply_ensemble(probs, gate, self.ensemble.params, box)


def encode_rows(vol: CaseDay, masks: np.ndarray) -> list[tuple[str, str, str]]:
    return [(sid, cls, rle.encode(masks[z, c])) for z, sid in enumerate(vol.ids) for c, cls in enumerate(CLASSES)]


# ---- the CSV -----------------------------------------------------------------------------------
def order_rows(rows: pd.DataFrame, sample: pd.DataFrame | None) -> pd.DataFrame:
    """Rows in the sample submission's order (it must be covered exactly), else as given."""
    if sample is None or sample.empty:
        return rows
    keyed = rows.set_index(["id", "class"])["predicted"]
    keys = pd.MultiIndex.from_frame(sample[["id", "class"]])
    missing = ~keys.isin(keyed.index)
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise DataError(f"sample_submission.csv row {i + 2}: no prediction for id {sample['id'].iloc[i]} "
                        f"class {sample['class'].iloc[i]} (no such test image)")
    extra = ~keyed.index.isin(keys)
    if extra.any():
        sid, cls = keyed.index[int(np.flatnonzero(extra)[0])]
        raise DataError(f"sample_submission.csv: has no row for predicted id {sid} class {cls}")
    return pd.DataFrame({"id": sample["id"], "class": sample["class"], "predicted": keyed.loc[keys].to_numpy()})


def validate_submission(sub: pd.DataFrame, shapes: dict[str, tuple[int, int]], source: str = "submission") -> None:
    """DataError unless: columns id,class,predicted; one row per (id in `shapes`, class); every RLE
    has increasing starts and decodes inside its (H, W) image."""
    if list(sub.columns) != COLUMNS:
        raise DataError(f"{source}: columns {list(sub.columns)}, expected {COLUMNS}")
    dup = sub.duplicated(["id", "class"])
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataError(f"{source} row {i + 2}: duplicate row for id {sub['id'].iloc[i]} class {sub['class'].iloc[i]}")
    bad = ~sub["class"].isin(CLASSES) | ~sub["id"].isin(shapes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source} row {i + 2}: unexpected id {sub['id'].iloc[i]} / class {sub['class'].iloc[i]}")
    if len(sub) != len(shapes) * len(CLASSES):
        have = set(zip(sub["id"], sub["class"]))
        sid, cls = next((s, c) for s in shapes for c in CLASSES if (s, c) not in have)
        raise DataError(f"{source}: missing row for id {sid} class {cls}")
    for i, (sid, text) in enumerate(zip(sub["id"], sub["predicted"].fillna(""))):
        if text:
            try:
                rle.decode(text, shapes[sid])
            except ValueError as exc:
                raise DataError(f"{source} row {i + 2}: id {sid}: {exc}") from None


def write_submission(sub: pd.DataFrame, out: Path) -> None:
    with atomic_path(out, suffix=".csv") as tmp:
        sub.to_csv(tmp, index=False)


def _read_sample(data_dir: Path) -> pd.DataFrame | None:
    path = data_dir / "sample_submission.csv"
    if not path.is_file():
        return None
    sample = read_csv_text(path)
    if not {"id", "class"} <= set(sample.columns):
        raise DataError(f"{path}: needs columns id and class; has {list(sample.columns)[:5]}")
    check_id_class_rows(sample, path)
    return sample


@dataclass(frozen=True)
class SubmitOptions:
    """What `python -m src.submit` was asked: the GI data takes --ensemble, 2D data --ensemble (a 2D
    ensemble file) or --runs (check_kind)."""

    data_dir: Path = field(metadata={"help": "dataset root with its test images (and sample_submission.csv)"})
    ensemble: Path | None = field(default=None, metadata={
        "help": "ensemble.json from python -m src.ensemble tune (GI data; 2D data: one tuned on 2D runs, or --runs)"})
    runs: tuple[Path, ...] = field(default=(), metadata={"nargs": "+", "help": (
        "2D data: run folders, the plain mean of their probabilities (instead of --ensemble)")})
    images: Path | None = field(default=None, metadata={
        "help": "2D data: predict every image of this folder instead of the test split (label images named like them)"})
    threshold: float | None = field(default=None, metadata={
        "help": "2D data with --runs: pixel threshold of the mean probabilities (default: the runs' validation "
                "threshold)"})
    tta: tuple[str, ...] = field(default=(), metadata={
        "help": "2D data with --runs: comma-separated flips hflip, vflip (with --ensemble: each member's, from the "
                "ensemble file)"})
    out: Path = field(default=Path("submissions/submission.csv"), metadata={
        "help": "the submission: a CSV (GI, Carvana) or a folder of label images (EBHI, nnU-Net, --images)"})
    allow_train_fallback: int = field(default=0, metadata={
        "help": "when test/ is empty, predict the first N train case-days instead", "metavar": "N"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    batch_size: int | None = field(default=None, metadata={"help": "slices per forward pass (default: each run's)"})
    runs_root: Path | None = field(default=None, metadata={
        "help": "find each run as <runs-root>/<run name> instead of its recorded path (e.g. in a kernel)"})
    allow_incomplete: bool = field(default=False, metadata={
        "help": "predict with folds without their done marker (killed or unfinished runs), with a warning"})
    max_image_pixels: int = max_image_pixels_field()

    def __post_init__(self):
        if self.allow_train_fallback < 0:
            raise DataError(f"--allow-train-fallback {self.allow_train_fallback}: must be >= 0")
        if self.batch_size is not None and self.batch_size < 1:
            raise DataError(f"--batch-size {self.batch_size}: must be at least 1")
        check_device_name(self.device)
        object.__setattr__(self, "tta", parse_tta(self.tta))
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise DataError(f"--threshold {self.threshold}: expected a probability in (0, 1)")

    def check_kind(self, two_d: bool) -> None:
        """DataError unless the flags fit the data: --ensemble for the GI slices; --ensemble (a 2D
        ensemble file, which sets thresholds and TTA) or --runs (their plain mean) for 2D images."""
        kind = "2D images" if two_d else "the GI slices"
        if two_d and self.runs and self.ensemble is not None:
            raise DataError("--runs: give --ensemble or --runs, not both (the ensemble file names its runs)")
        if not (self.ensemble or (two_d and self.runs)):
            raise DataError(f"{'--ensemble or --runs' if two_d else '--ensemble'}: required, "
                            f"{self.data_dir} holds {kind}")
        if two_d and self.ensemble is not None:
            wrong = next((name for name, value in (("--threshold", self.threshold is not None), ("--tta", self.tta))
                          if value), None)
            if wrong:
                raise DataError(f"{wrong}: applies to --runs only; the ensemble file {self.ensemble} sets the "
                                "thresholds and each member's TTA")
        others = ((("--allow-train-fallback", self.allow_train_fallback), ("--runs-root", self.runs_root),
                   ("--batch-size", self.batch_size is not None)) if two_d else
                  (("--runs", self.runs), ("--images", self.images), ("--threshold", self.threshold is not None),
                   ("--tta", self.tta)))
        wrong = next((name for name, value in others if value), None)
        if wrong:
            raise DataError(f"{wrong}: applies to {'the GI data' if two_d else '2D data'} only, "
                            f"{self.data_dir} holds {kind}")


def submit(opts: SubmitOptions) -> Path:
    """Predict the test split of `data_dir` and write the submission to `out`; returns `out`.

    The data folder's detected format decides the kind: 2D images go to src.ensembling.submission2d,
    the GI slices are predicted here with the ensemble. Why the data folder and not the runs: it is given
    in both kinds (the GI runs are known only once the ensemble file is read), its test images are read
    in its layout, and its format names the submission's form; the runs are then checked against it.

    GI: an empty test/ (Kaggle's development phase) writes the sample submission with empty
    predictions; with no sample submission either, it is an error (or --allow-train-fallback).
    """
    device = select_device(opts.device)  # before any work
    dataset = image_dataset(opts.data_dir, opts.max_image_pixels)  # 2D: every test image is read with the cap
    opts.check_kind(two_d=dataset is not None)
    if dataset is not None:
        return submit_images(opts, *dataset, device)
    data_dir, out = Path(opts.data_dir), Path(opts.out)
    check_output(out, "--out", (opts.ensemble,), data_dir)
    ensemble = load_ensemble(opts.ensemble)
    if ensemble.dims != "slices":
        raise DataError(f"--ensemble {opts.ensemble}: an ensemble of 2D image runs, {data_dir} holds the GI slices")
    check_writable(out)
    index = scan_split(data_dir, "test", opts.max_image_pixels)
    sample = _read_sample(data_dir)
    if index.empty:
        if not opts.allow_train_fallback:
            if sample is None:
                raise DataError(f"{data_dir / 'test'}: no test images and no sample_submission.csv beside it: "
                                "nothing to submit (--allow-train-fallback N predicts N train case-days instead)")
            print(f"submit: {data_dir / 'test'} is empty (Kaggle's development phase)")
            write_submission(pd.DataFrame({"id": sample["id"], "class": sample["class"], "predicted": ""}), out)
            print(f"submit: wrote the sample submission's {len(sample)} rows, empty, to {out}")
            return out
        index, sample = pseudo_test_index(data_dir, opts.allow_train_fallback, opts.max_image_pixels), None
        print(f"submit: test/ is empty; predicting {index['case_day'].nunique()} train case-days "
              "as a pseudo test split")
    predictor = EnsemblePredictor(ensemble, device, opts.batch_size, opts.runs_root, opts.allow_incomplete)
    rows = []
    for _, group in index.groupby("case_day", sort=False):
        vol = read_volume(group)
        rows += encode_rows(vol, predictor.masks(vol))
    sub = order_rows(pd.DataFrame(rows, columns=COLUMNS), sample)
    shapes = {sid: (int(h), int(w)) for sid, h, w in zip(index["id"], index["height"], index["width"])}
    validate_submission(sub, shapes)
    write_submission(sub, out)
    print(f"submit: {len(sub)} rows ({(sub['predicted'] != '').sum()} non-empty) for "
          f"{index['case_day'].nunique()} case-days -> {out}")
    return out

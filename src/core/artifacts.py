"""The one owner of every artifact's on-disk layout: runs, folds, predictions, the cache, ensemble files.

No other module spells a file name of an artifact; they all read and write through these types.

    runs/<name>/                          RunDir
        fold<k>/ | foldall/               FoldDir
            config.json                   the run's config, its case-days, seed, versions (first)
            best.pt                       weights of the best epoch {"model": state_dict, "epoch"}
            last.pt                       full training state for --resume
            log.csv                       one row per epoch
            oof/<case_day>.npy|.json      out-of-fold predictions of the best epoch (oof.staging/ while written)
            oof_scores.csv                the best epoch's validation table
            done.json                     written last: the fold is complete
        fold<k>.staging/                  a training in progress (same files); replaces fold<k>/ when done
        fold<k>.lock                      the lock of the one process training fold<k> (src.core.lock)
        pred_<split>/                     PredictionDir: <case_day>.npy|.json, predict.json written last
    cache/<data>/description.json         the dataset's description (description_path)
    cache/<data>/<split>/<entry>/         CacheEntryFiles: image.npy, mask.npy, meta.json (last); an entry is a
                                          case-day volume, or one image of a 2D dataset
    ensemble.json                         EnsembleRecord (versioned)
    reports/<name>/                       index.html (REPORT_PAGE), its PNG figures, report.json (REPORT_MARKER, last)
    <out>/                                a 2D submission's label images <id><ending>, submission.json
                                          (SUBMISSION_MARKER, last)
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
import pandas as pd

from src.core.atomic import (
    atomic_path,
    save_npy_atomic,
    staging_dir,
    swap_dir,
    write_json_atomic,
    write_text_atomic,
)
from src.core.errors import DataError
from src.core.lock import exclusive_lock
from src.core.readers import read_json_object

FOLD_RE = re.compile(r"^fold(\d+|all)$")
STAGING_SUFFIX = ".staging"  # a folder being written, beside the one it replaces when complete
FOLD_LOCK_SUFFIX = ".lock"
LAYOUT_VERSION = 1  # of fold configs and prediction manifests; a file without one is version 1
PREDICTION_SUFFIXES = (".npy", ".json")  # probability arrays; a detector's box records
REPORT_PAGE, REPORT_MARKER = "index.html", "report.json"  # a report folder: its page, and its marker (last)
SUBMISSION_MARKER = "submission.json"  # a folder of predicted label images: what made it (last)


Prediction = np.ndarray | dict  # probabilities, or a detector's box record


def _check_version(value, expected: int, path: Path, what: str, hint: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DataError(f"{path}: {what} {value!r} is not an integer (this code reads {expected}){hint}")
    if value != expected:
        raise DataError(f"{path}: {what} {value}, this code reads {expected}{hint}")


def _check_layout(record: dict, path: Path) -> None:
    _check_version(record.get("layout", 1), LAYOUT_VERSION, path, "layout version")


def save_prediction(folder: str | Path, case_day: str, prediction: Prediction) -> Path:
    """`<folder>/<case_day>.npy` (float16 probabilities) or `.json` (a box record), atomically."""
    if isinstance(prediction, dict):
        path = Path(folder) / f"{case_day}.json"
        write_json_atomic(path, prediction)
    else:
        path = Path(folder) / f"{case_day}.npy"
        save_npy_atomic(path, np.asarray(prediction, dtype=np.float16))
    return path


def load_prediction(path: str | Path, mmap: bool = False, image: bool = False, classes: int | None = None) -> Prediction:
    """A saved prediction, checked: a box record (.json) or a float16 array of (Z, K) presence or
    (Z, K, H, W) probabilities of K = `classes` (any K when None), with `image` a 2D image's (K, H, W)
    probabilities or (K,) presence, all in [0, 1] (.npy, memory-mapped read-only with `mmap`). Anything else is a
    DataError naming the file. The GI dataset's are read through src.data.layout.load_prediction."""
    path = Path(path)
    if path.suffix == ".json":
        record = read_json_object(path, "box prediction")
        box = record.get("box")
        if not (isinstance(box, list) and len(box) == 4 and all(type(v) is int for v in box)):
            raise DataError(f"{path}: box prediction without a 'box' of 4 integers [y0, y1, x0, x1]")
        return record
    array = _open_array(path, mmap, image, classes)
    if _outside_unit_interval(array.view(np.uint16).reshape(-1)):
        what = "NaN or inf" if np.isnan(array).any() or np.isinf(array).any() else "outside [0, 1]"
        raise DataError(f"{path}: holds {what} probabilities")
    return array


def prediction_shape(path: str | Path, image: bool = False, classes: int | None = None) -> tuple[int, ...]:
    """The shape of a saved prediction array from its header (checked as load_prediction does, values aside)."""
    return _open_array(Path(path), mmap=True, image=image, classes=classes).shape


def _open_array(path: Path, mmap: bool, image: bool = False, classes: int | None = None) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: unreadable prediction ({type(exc).__name__}: {exc})") from None
    if image:
        fits = getattr(array, "ndim", 0) in (1, 3)
        expected = "a 2D image's float16 (K, H, W) probabilities or (K,) presence"
    else:
        fits = getattr(array, "ndim", 0) in (2, 4) and (classes is None or array.shape[1] == classes)
        k = "K" if classes is None else classes
        expected = f"float16 (Z, {k}) presence or (Z, {k}, H, W) probabilities"
    if not isinstance(array, np.ndarray) or array.dtype != np.float16 or not fits or 0 in array.shape:
        raise DataError(f"{path}: prediction of shape {getattr(array, 'shape', None)} and dtype "
                        f"{getattr(array, 'dtype', type(array).__name__)}; expected {expected}")
    return array


@numba.njit(cache=True, nogil=True)
def _outside_unit_interval(u) -> bool:
    """Whether any float16 (as its uint16 bits) is not in [0, 1]: bits above 1.0's (0x3C00) are
    larger, infinite or NaN, and every sign-bit pattern but -0 (0x8000) is negative or NaN."""
    bad = False  # branch-free, so that it vectorises
    for i in range(u.size):
        bad |= (u[i] > 0x3C00) & (u[i] != 0x8000)
    return bad


def _fold_order(name: str) -> tuple[int, int]:
    return (1, 0) if name == "all" else (0, int(name))


# ---- a fold ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FoldRecord:
    """config.json of a fold: the stage config's fields and the case-days it trained and validated on."""

    config: dict
    train_case_days: tuple[str, ...] = ()
    val_case_days: tuple[str, ...] = ()
    seed: int | None = None
    world_size: int = 1
    versions: dict = field(default_factory=dict)

    @property
    def stage(self) -> str:
        return self.config.get("stage", "seg2d")


class FoldDir:
    """One trained fold, `runs/<name>/fold<k>/`, or the staging folder a training writes into,
    `fold<k>.staging/` (same files), which replaces the fold only once complete (`commit_staging`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        name = self.path.name.removesuffix(STAGING_SUFFIX)
        match = FOLD_RE.match(name)
        if not match:
            raise DataError(f"{self.path}: not a fold folder (expected fold<k> or foldall)")
        self.fold = match.group(1)
        self.is_staging = name != self.path.name
        self.final_path = self.path.with_name(name)
        self.config_path = self.path / "config.json"
        self.weights = self.path / "best.pt"
        self.last = self.path / "last.pt"
        self.done_path = self.path / "done.json"
        self.log_path = self.path / "log.csv"
        self.oof_dir = self.path / "oof"
        self.oof_staging = self.path / "oof.staging"
        self.oof_scores_path = self.path / "oof_scores.csv"
        self.yolo_dir = self.path / "yolo"  # the detector's ultralytics training folder
        self.yolo_results = self.yolo_dir / "results.csv"
        self.det_dataset = self.path / "dataset"  # the detector's exported YOLO dataset

    def __repr__(self) -> str:
        return f"FoldDir({str(self.path)!r})"

    @property
    def run(self) -> RunDir:
        return RunDir(self.path.parent)

    # training into a staging folder, one writer at a time
    @property
    def staging(self) -> FoldDir:
        return FoldDir(self.final_path.with_name(self.final_path.name + STAGING_SUFFIX))

    @property
    def final(self) -> FoldDir:
        return FoldDir(self.final_path)

    @property
    def lock_path(self) -> Path:
        return self.final_path.with_name(self.final_path.name + FOLD_LOCK_SUFFIX)

    def has_resume_state(self) -> bool:
        """An interrupted training's state is here: the staging folder's last.pt, or the fold's own
        when it is not done (a fold trained in place by older code)."""
        return self.staging.last.is_file() or (self.final.last.is_file() and not self.final.is_done())

    def commit_staging(self) -> None:
        """Make the complete staging folder (done marker written) the fold, by renames."""
        staging = self.staging
        if not staging.is_done():
            raise DataError(f"{staging.path}: not complete (no done marker); the fold is left as it was")
        swap_dir(staging.path, self.final_path)
        self.run.record_completed(self.fold)

    # config
    def write_config(self, record: FoldRecord) -> None:
        write_json_atomic(self.config_path, {
            "layout": LAYOUT_VERSION, "config": record.config, "seed": record.seed, "train_case_days": list(record.train_case_days),
            "val_case_days": list(record.val_case_days), "world_size": record.world_size,
            "versions": record.versions})

    def read_config(self) -> FoldRecord:
        raw = read_json_object(self.config_path, "run config")
        _check_layout(raw, self.config_path)
        if not isinstance(raw.get("config"), dict):
            raise DataError(f"{self.config_path}: run config has no 'config' object")
        try:
            return FoldRecord(raw["config"], tuple(raw.get("train_case_days", ())), tuple(raw.get("val_case_days", ())),
                              raw.get("seed"), int(raw.get("world_size", 1)), dict(raw.get("versions") or {}))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{self.config_path}: bad run config ({exc})") from None

    # completion
    def is_done(self) -> bool:
        return self.done_path.is_file()

    def write_done(self, record: dict) -> None:
        write_json_atomic(self.done_path, record)

    def read_done(self) -> dict | None:
        return read_json_object(self.done_path, "done marker") if self.done_path.is_file() else None

    # out-of-fold predictions and scores
    def begin_oof(self) -> None:
        """An empty oof.staging/ for a validation pass to write into."""
        shutil.rmtree(self.oof_staging, ignore_errors=True)
        self.oof_staging.mkdir(parents=True)

    def stage_oof(self, case_day: str, prediction: Prediction) -> Path:
        """Write one case-day's validation prediction into oof.staging/."""
        return save_prediction(self.oof_staging, case_day, prediction)

    def discard_oof_staging(self) -> None:
        shutil.rmtree(self.oof_staging, ignore_errors=True)

    def oof_files(self) -> dict[str, Path]:
        if not self.oof_dir.is_dir():
            return {}
        return {p.stem: p for p in sorted(self.oof_dir.iterdir()) if p.suffix in PREDICTION_SUFFIXES}

    def promote_oof(self, per_case_day: pd.DataFrame) -> None:
        """Make the staged OOF predictions the fold's oof/ (swap by rename) and save their scores."""
        swap_dir(self.oof_staging, self.oof_dir)
        with atomic_path(self.oof_scores_path, suffix=".csv") as tmp:
            per_case_day.to_csv(tmp, index=False)

    def read_oof_scores(self) -> pd.DataFrame | None:
        return pd.read_csv(self.oof_scores_path) if self.oof_scores_path.is_file() else None

    # log
    def append_log(self, row: dict) -> None:
        log = self.read_log()
        log = pd.concat([log, pd.DataFrame([row])], ignore_index=True) if log is not None else pd.DataFrame([row])
        write_text_atomic(self.log_path, log.to_csv(index=False))

    def write_log(self, log: pd.DataFrame) -> None:
        write_text_atomic(self.log_path, log.to_csv(index=False))

    def read_log(self) -> pd.DataFrame | None:
        return pd.read_csv(self.log_path) if self.log_path.is_file() else None

    # what a Kaggle bundle carries of a fold: config and weights
    def bundle_files(self) -> list[Path]:
        return [self.config_path, self.weights, self.done_path]


# ---- a run -------------------------------------------------------------------------------------
class RunDir:
    """A run, `runs/<name>/`: its folds and its predictions."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = self.path.name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def fold(self, fold: str | int) -> FoldDir:
        return FoldDir(self.path / f"fold{fold}")

    # the folds completed so far: a fold that disappears afterwards is an error, not a smaller run
    @property
    def completed_path(self) -> Path:
        return self.path / "completed_folds.json"

    def completed_folds(self) -> list[str]:
        """Every fold ever completed in this run ([] for a run of older code, which has no record)."""
        if not self.completed_path.is_file():
            return []
        folds = read_json_object(self.completed_path, "record of completed folds").get("folds")
        if not isinstance(folds, list) or not all(isinstance(f, str) and FOLD_RE.match(f"fold{f}") for f in folds):
            raise DataError(f"{self.completed_path}: 'folds' must be a list of fold names")
        return folds

    def record_completed(self, fold: str) -> None:
        """Add `fold` to the record (under the run's lock: two folds may finish at once)."""
        with exclusive_lock(self.path / "completed_folds.lock", f"the record of run {self.name}", wait=True):
            folds = self.completed_folds()
            if fold not in folds:
                write_json_atomic(self.completed_path, {"folds": sorted(folds + [fold], key=_fold_order)})

    def folds(self, require_weights: bool = True) -> dict[str, FoldDir]:
        """The folds that have weights (or, without `require_weights`, a config), keyed "0", "1", ...,
        "all" (numbered first)."""
        if not self.path.is_dir():
            raise DataError(f"{self.path}: run folder not found")
        found = {}
        for path in self.path.iterdir():
            if FOLD_RE.match(path.name):
                fold = FoldDir(path)
                if (fold.weights if require_weights else fold.config_path).is_file():
                    found[fold.fold] = fold
        if not found:
            what = "fold*/best.pt (train the run first)" if require_weights else "fold*/config.json (not a run folder)"
            raise DataError(f"{self.path}: no {what}")
        return dict(sorted(found.items(), key=lambda kv: _fold_order(kv[0])))

    def predictions(self, split: str) -> PredictionDir:
        return PredictionDir(self.path / f"pred_{split}")


def fold_dir(runs_root: str | Path, name: str, fold: str | int) -> FoldDir:
    """`<runs_root>/<name>/fold<fold>/`."""
    return RunDir(Path(runs_root) / name).fold(fold)


# ---- predictions -------------------------------------------------------------------------------
class PredictionDir:
    """Predictions of one split: `<case_day>.npy` (probabilities) or `.json` (boxes), predict.json last.
    They are written into a staging sibling that replaces the folder only when complete, so a failed
    prediction leaves the previous one as it was."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest_path = self.path / "predict.json"
        self.staging: Path | None = None

    def file(self, case_day: str, suffix: str = ".npy") -> Path:
        return self.path / f"{case_day}{suffix}"

    def begin(self) -> None:
        """An empty staging folder for a new prediction."""
        self.discard()
        self.staging = staging_dir(self.path)

    def save(self, case_day: str, prediction: Prediction) -> Path:
        return save_prediction(self.staging, case_day, prediction)

    def commit(self, manifest: dict) -> None:
        """Write the manifest last and make the staged predictions the folder."""
        write_json_atomic(self.staging / self.manifest_path.name, {"layout": LAYOUT_VERSION, **manifest})
        swap_dir(self.staging, self.path)
        self.staging = None

    def discard(self) -> None:
        """Remove the staging folder of an unfinished prediction."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def read_manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        manifest = read_json_object(self.manifest_path, "prediction manifest")
        _check_layout(manifest, self.manifest_path)
        return manifest

    def files(self) -> dict[str, Path]:
        """case-day -> file of a complete folder (one with its manifest); {} when incomplete."""
        manifest = self.read_manifest()
        if manifest is None:
            return {}
        out = {}
        for cd in manifest.get("case_days", []):
            found = [self.file(cd, s) for s in PREDICTION_SUFFIXES if self.file(cd, s).is_file()]
            if not found:
                raise DataError(f"{self.path}: {cd} is listed in {self.manifest_path.name} but has no prediction file")
            out[cd] = found[0]
        return out


# ---- the cache ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheEntryFiles:
    """One cache entry: image.npy, mask.npy (labelled splits only), meta.json (last).

    A case-day volume: image uint16 (Z, H, W), mask uint8 (Z, 3, H, W). A 2D sample: image (H, W, C),
    mask uint8 (H, W) index map."""

    folder: Path

    @classmethod
    def of(cls, cache_dir: str | Path, split: str, case_day: str) -> CacheEntryFiles:
        return cls(Path(cache_dir) / split / case_day)

    @property
    def image(self) -> Path:
        return self.folder / "image.npy"

    @property
    def mask(self) -> Path:
        return self.folder / "mask.npy"

    @property
    def meta(self) -> Path:
        return self.folder / "meta.json"


def description_path(cache_dir: str | Path) -> Path:
    """The dataset description a cache was prepared with (src.data.description reads and writes it)."""
    return Path(cache_dir) / "description.json"


def cached_entries(cache_dir: str | Path, split: str) -> list[str]:
    """Names of the complete (meta.json written) entries (case-days, 2D images) of a cached split, unordered."""
    folder = Path(cache_dir) / split
    return [p.parent.name for p in folder.glob("*/meta.json")] if folder.is_dir() else []


# ---- ensemble files ----------------------------------------------------------------------------
ENSEMBLE_VERSION = 2  # 2: typed members, every gate and crop run described once under "auxiliary"


@dataclass(frozen=True)
class EnsembleRecord:
    """A read ensemble.json of this code's version: its path and the whole record (typed by
    src.ensembling.ensemble_file.load_ensemble)."""

    path: Path
    record: dict


def read_ensemble(path: str | Path) -> EnsembleRecord:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: ensemble file not found (run python -m src.ensemble tune)")
    record = read_json_object(path, "ensemble file")
    missing = [k for k in ("version", "runs", "params") if k not in record]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}")
    _check_version(record["version"], ENSEMBLE_VERSION, path, "ensemble file version",
                   ": rebuild it with python -m src.ensemble tune --runs ... (the runs' OOF predictions are reused)")
    return EnsembleRecord(path, record)


def write_ensemble(path: str | Path, record: dict) -> None:
    write_json_atomic(path, {"version": ENSEMBLE_VERSION, **record})

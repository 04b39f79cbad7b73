"""Ablation over repeated splits: every variant is trained on the same R seeded splits (80/20 by
default) and compared with the base on each, so differences come with a paired confidence interval.

A variant is the base train config (its flags parsed into Seg2DConfig, the config of the seg2d stage,
which trains 2.5D on GI volumes and 2D on a cache of images: the stage picks the task from the cache's
description) with one field changed by `dataclasses.replace`, so the config validates it
(`--vary lr=1e-3,1e-2` gives two); the base is a variant too. `--split MODE[:TRAIN]` draws the splits:
MODE `random` or `grouped`, TRAIN the training fraction (`random:0.8`; without it 1 - --val-fraction).
Split r is drawn with seed `seed + r` and written as a folds file (fold 0 = validation, fold 1 =
training), and every (variant, split) cell is trained by `python -m src.train --fold 0` with training
seed `base seed + r`. The unit of a split depends on the data:

- GI volumes: `random` draws case-days (two days of a patient may fall on both sides, as the original
  studies' image-level splits did), `grouped` whole cases. Random splits train on an alias of the cache
  in which each case-day is its own case (`case1_day3` -> `case1003_day3`, files linked, not copied),
  since a folds file groups by case.
- 2D images (Carvana, EBHI-Seg, nnU-Net 2D; the EBHI-Seg study protocol is `--split random:0.8`):
  `random` draws labelled images, ignoring their groups as the original image-level study did; its
  folds file says group = id, so the check that no group spans two folds holds. `grouped` draws whole
  groups (the views of a Carvana car). No alias cache is needed.

Scoring, from each cell's OOF probabilities against the cache's truth:
- GI, at threshold 0.5: the competition score (and its Dice and Hausdorff terms), and per class the
  pixel-level Dice, Jaccard, precision, recall and accuracy over all validation voxels. The summary has
  mean and std over the splits per variant; the paired differences are of score and mean Jaccard.
- 2D, at the run's --threshold (src.data.image_samples.label_map): per-image Dice, Jaccard, precision
  and recall (src.metrics.overlap, mean over classes), averaged over the validation images overall and
  per category (the stratum: EBHI-Seg's categories, named as the data names them); a cell holds `jaccard`
  and `jaccard@<category>`. The summary is long, one row per variant and category ("all" first) with
  each stat's mean and sd over the splits and `n`, the splits whose validation held the category; the
  paired differences, of overall Jaccard and Dice, are on the "all" rows.
A variant's paired difference from the base is the mean of the per-split differences
+- t(confidence, R - 1) x sd / sqrt(R); `beyond_noise` says whether the interval of the first one
(score on GI, Jaccard on 2D) excludes 0.

Resumable: a scored cell (cells/<run>.json) is never retrained; an unfinished training resumes. The
trainings are steps (src.orchestration.execution): one after another here, or with `--executor ray`
as Ray tasks, several at once; each writes its output to logs/<run>.log.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shlex
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Hashable, Sequence

import numpy as np
import pandas as pd

from src.core.artifacts import CacheEntryFiles, FoldDir, fold_dir
from src.core.atomic import atomic_path, write_json_atomic, write_text_atomic
from src.core.errors import DataError
from src.core.ids import case_day_key
from src.core.options import changed, flag, parse_flags, parse_value, to_flags
from src.core.readers import read_json_object
from src.data.image_cache import is_image_cache
from src.data.layout import CLASSES, load_prediction
from src.data.preparation import ensure_prepared
from src.orchestration.execution import address_field, check_executor, executor_field, open_executor, run_graph
from src.orchestration.steps import OutputLedger, Step

SPLITS = ("random", "grouped")
VAL_FRACTION = 0.2  # --val-fraction's default
OWNED = ("fold", "folds_csv", "out", "name", "seed", "stage", "resume", "list_archs")  # set per split and cell
SUMMARY_METRICS = ("score", "comp_dice", "hausdorff", "jaccard", "dice")
GI_PAIRED = ("score", "jaccard")  # paired differences on GI; beyond_noise is of the first
IMAGE_PAIRED = ("jaccard", "dice")  # on 2D images
TITLES = {"score": "score", "jaccard": "Jaccard", "dice": "Dice"}


def _owned(name: str) -> DataError:
    return DataError(f"--base: {flag(name)} is set by the ablation itself (per split and cell)")


def parse_base(tokens: tuple[str, ...]):
    """The seg2d train config of `--arch A --lr 1e-3 --no-amp ...` (validated by the config itself): 2.5D
    on GI volumes, 2D on a cache of images (which the stage tells from the cache's description)."""
    from src.engine.config import Seg2DConfig

    given, rest = parse_flags(Seg2DConfig, tokens, "--base")
    for token in rest:
        if not token.startswith("--"):
            raise DataError(f"--base: expected a --flag, got {token!r}")
        name = token[2:].split("=", 1)[0]
        if name.removeprefix("no-").replace("-", "_") in OWNED:
            raise _owned(name)
        raise DataError(f"--base: --{name} is not a flag of python -m src.train (see its --help)")
    owned = [name for name in given if name in OWNED]
    if owned:
        raise _owned(owned[0])
    return Seg2DConfig(**given)


def varied(base, name: str, value: str):
    """The base config with the field of the flag `name` set to `value` (its text)."""
    key = name.replace("-", "_")
    if key in OWNED:
        raise DataError(f"--vary: {name} is set by the ablation itself")
    if key not in {f.name for f in dataclasses.fields(base)}:
        raise DataError(f"--vary: {name} is not a flag of python -m src.train (see its --help)")
    try:
        return dataclasses.replace(base, **{key: parse_value(type(base), key, value)})
    except DataError as exc:
        raise DataError(f"--vary: {exc}") from None


def split_base(text: str) -> tuple[str, ...]:
    """`--base "--arch A --epochs 2"` -> its tokens, quoted as a shell would."""
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise DataError(f"--base: {exc}") from None


def parse_vary(text: str) -> tuple[str, tuple[str, ...]]:
    """`lr=1e-3,1e-2` -> ("lr", ("1e-3", "1e-2")); values holding commas are separated by `;` instead."""
    if "=" not in text:
        raise DataError(f"--vary: expected name=v1,v2, got {text!r}")
    name, values = text.split("=", 1)
    name = name.strip().removeprefix("--").replace("_", "-")
    sep = ";" if ";" in values else ","
    return name, tuple(v.strip() for v in values.split(sep) if v.strip())


def parse_split(text: str) -> tuple[str, float | None]:
    """`random` -> ("random", None); `random:0.8` -> ("random", 0.8), the training fraction; also
    `grouped[:F]`. Anything else is a one-line DataError."""
    mode, colon, fraction = str(text).partition(":")
    expected = f"--split: expected random or grouped, optionally with :TRAIN_FRACTION (random:0.8), got {text!r}"
    if mode not in SPLITS:
        raise DataError(expected)
    if not colon:
        return mode, None
    try:
        train = float(fraction)
    except ValueError:
        raise DataError(expected) from None
    if not 0 < train < 1:
        raise DataError(f"--split {text}: the training fraction must be in (0, 1), got {fraction}")
    return mode, train


@dataclass(frozen=True)
class AblationOptions:
    """What `python -m src.ablate` was asked: the base's train arguments, the varied flags, the splits."""

    base: tuple[str, ...] = field(metadata={
        "parse": split_base, "help": 'train arguments of the base, one string: "--arch A --epochs 2"'})
    vary: tuple[tuple[str, tuple[str, ...]], ...] = field(default=(), metadata={
        "parse": parse_vary, "append": True, "metavar": "FLAG=V1,V2", "help": "a train flag and its values"})
    repeats: int = field(default=3, metadata={"help": "seeded splits per variant"})
    split: str = field(default="random", metadata={
        "metavar": "MODE[:TRAIN]",
        "help": "random | grouped, optionally with the training fraction (random:0.8 = 80/20). GI: random "
                "draws case-days, grouped whole cases; 2D: random draws images, grouped whole groups (cars)"})
    val_fraction: float = field(default=VAL_FRACTION, metadata={
        "help": "validation share when --split has no :TRAIN_FRACTION"})
    seed: int = field(default=0, metadata={"help": "split r is drawn with seed + r"})
    confidence: float = field(default=0.95, metadata={"help": "of the paired intervals"})
    out: str = "reports/ablation"
    executor: str = executor_field()
    address: str = address_field()

    def __post_init__(self):
        check_executor(self.executor)
        for name, values in self.vary:
            if not values:
                raise DataError(f"--vary: {name} has no values (write {name}=v1,v2)")
        variants(self)
        if self.repeats < 2:
            raise DataError(f"--repeats: at least 2 splits are needed for a confidence interval, got {self.repeats}")
        _, train = parse_split(self.split)
        if not 0 < self.val_fraction < 1:
            raise DataError(f"--val-fraction: must be in (0, 1), got {self.val_fraction}")
        if train is not None and self.val_fraction != VAL_FRACTION and not math.isclose(self.val_fraction, 1 - train):
            raise DataError(f"--split {self.split} validates on {1 - train:g} but --val-fraction says "
                            f"{self.val_fraction:g}; give the fraction once")
        if not 0 < self.confidence < 1:
            raise DataError(f"--confidence: must be in (0, 1), got {self.confidence}")

    @property
    def split_mode(self) -> str:
        """random or grouped."""
        return parse_split(self.split)[0]

    @property
    def split_val_fraction(self) -> float:
        """The validation share: 1 - the training fraction of --split MODE:TRAIN, else --val-fraction."""
        train = parse_split(self.split)[1]
        return self.val_fraction if train is None else round(1 - train, 12)  # 1 - 0.8 -> 0.2, not 0.19999...

    @cached_property
    def base_config(self):
        return parse_base(self.base)

    @property
    def cache(self) -> Path:
        from src.data.volumes import cache_dir_for

        config = self.base_config
        return cache_dir_for(config.cache_dir, config.data_dir)


# ---- variants and splits ---------------------------------------------------------------------------
def variants(opts: AblationOptions) -> dict:
    """label -> train config: "base", then "flag=value" per varied value (values giving the base's config skipped)."""
    base = opts.base_config
    out = {"base": base}
    for name, values in opts.vary:
        for value in values:
            config = varied(base, name, value)
            if config != base:
                out[f"{name}={value}"] = config
    return out


def alias(case_day: str) -> str:
    """The case-day as its own case: case1_day3 -> case1003_day3."""
    case, day = case_day_key(case_day)
    return f"case{case * 1000 + day}_day{day}"


def draw_units(units: Sequence, group_of: Callable[[object], Hashable], mode: str, val_fraction: float,
               seed: int, groups_are: str = "groups") -> list:
    """The validation units of one split (in drawing order): `random` draws round(val_fraction x n) units
    (at least 1, at most n - 1); `grouped` draws whole groups (`group_of` a unit; sorted, permuted) until
    that many units are in, keeping at least one group for training. Seeded by `seed`."""
    rng = np.random.default_rng(seed)
    n_val = min(max(1, round(val_fraction * len(units))), len(units) - 1)
    if mode == "random":
        return [units[i] for i in rng.permutation(len(units))[:n_val]]
    by_group: dict = {}
    for unit in units:
        by_group.setdefault(group_of(unit), []).append(unit)
    if len(by_group) < 2:
        raise DataError(f"--split grouped: the data has fewer than 2 {groups_are}")
    keys = sorted(by_group)
    val: list = []
    for k in rng.permutation(len(keys))[:-1]:  # at least one group stays for training
        if len(val) >= n_val:
            break
        val += by_group[keys[k]]
    return val


def draw_split(case_days: list[str], mode: str, val_fraction: float, seed: int) -> list[str]:
    """The validation case-days of one split (sorted)."""
    val = draw_units(case_days, lambda cd: case_day_key(cd)[0], mode, val_fraction, seed, "cases")
    return sorted(val, key=case_day_key)


def image_groups(images: pd.DataFrame) -> dict[str, str]:
    """id -> group of a 2D cache's table (id, group); an image without a group is its own."""
    return {i: g if isinstance(g, str) and g else i for i, g in zip(images["id"], images["group"])}


def draw_image_split(images: pd.DataFrame, mode: str, val_fraction: float, seed: int) -> list[str]:
    """The validation image ids of one split of a 2D cache's table (id, group): `random` draws images
    (their groups ignored), `grouped` whole groups (image_groups). Sorted."""
    return sorted(draw_units(sorted(images["id"]), image_groups(images).__getitem__, mode, val_fraction, seed, "groups"))


def _write_split(path: Path, case_days: list[str], val: list[str], aliased: bool) -> None:
    rows = []
    for cd in case_days:
        name = alias(cd) if aliased else cd
        case, day = case_day_key(name)
        rows.append((case, day, name, 0 if cd in val else 1))
    with atomic_path(path, suffix=".csv") as tmp:
        pd.DataFrame(rows, columns=["case", "day", "case_day", "fold"]).to_csv(tmp, index=False)


def image_split_table(images: pd.DataFrame, val: list[str], mode: str) -> pd.DataFrame:
    """The 2D folds file of a split (id, group, stratum, fold; fold 0 = validation, 1 = training), sorted
    by id: a random split's images are each their own group (so no group spans two folds)."""
    from src.data.folds import SAMPLE_FOLD_COLUMNS

    table = images.sort_values("id", kind="stable")
    val, groups = set(val), image_groups(table)
    group = list(table["id"]) if mode == "random" else [groups[i] for i in table["id"]]
    stratum = [s if isinstance(s, str) else "" for s in table["stratum"]]
    fold = [0 if i in val else 1 for i in table["id"]]
    return pd.DataFrame(dict(zip(SAMPLE_FOLD_COLUMNS, (list(table["id"]), group, stratum, fold))))


def _alias_cache(cache: Path, target: Path, case_days: list[str]) -> None:
    """`target/train/<alias>/` linking the cache's files of every case-day (meta.json last)."""
    for cd in case_days:
        src, dst = CacheEntryFiles.of(cache, "train", cd), CacheEntryFiles.of(target, "train", alias(cd))
        if dst.meta.exists():
            continue
        dst.folder.mkdir(parents=True, exist_ok=True)
        for a, b in ((src.image, dst.image), (src.mask, dst.mask), (src.meta, dst.meta)):
            if not b.exists():
                os.symlink(a.resolve(), b)


def _split_path(opts: AblationOptions, r: int) -> Path:
    return Path(opts.out) / "splits" / f"{opts.split_mode}_{opts.split_val_fraction:g}_seed{opts.seed + r}.csv"


# ---- the two kinds of data -----------------------------------------------------------------------
class VolumeStudy:
    """GI case-day volumes: splits of case-days (an alias cache for random ones), the competition score
    and per-class pixel metrics, the wide summary."""

    headline = "score"

    def __init__(self, opts: AblationOptions):
        from src.data.volumes import VolumeCache

        self.opts = opts
        self.case_days = VolumeCache(opts.cache).case_days()
        if len(self.case_days) < 2:
            raise DataError(f"--base: the cache {opts.cache} holds {len(self.case_days)} case-day(s); an ablation needs two")
        self.aliased = opts.split_mode == "random"
        self.train_cache = Path(opts.out) / "cache_aliased" if self.aliased else opts.cache

    def write_splits(self) -> list[Path]:
        if self.aliased:
            _alias_cache(self.opts.cache, self.train_cache, self.case_days)
        paths = []
        for r in range(self.opts.repeats):
            val = draw_split(self.case_days, self.opts.split_mode, self.opts.split_val_fraction, self.opts.seed + r)
            paths.append(_split_path(self.opts, r))
            _write_split(paths[-1], self.case_days, val, self.aliased)
        return paths

    def score(self, fold: FoldDir) -> dict[str, float]:
        from src.data.volumes import VolumeCache
        from src.research.evaluation import evaluate

        cache = VolumeCache(self.train_cache)
        files = fold.oof_files()
        val = list(fold.read_config().val_case_days)
        missing = [cd for cd in val if cd not in files]
        if missing or not val:
            raise DataError(f"{fold.path}: no OOF prediction for {missing[0] if missing else 'any case-day'}")
        return evaluate((cd, load_prediction(files[cd]).astype(np.float32), np.asarray(cache.load(cd).mask))
                        for cd in val)

    def report(self, long: pd.DataFrame, order: list[str], out: Path) -> pd.DataFrame:
        summary = summarise(long, order, self.opts.confidence)
        _write_summary(summary, out)
        plot(long, order, out / "ablation.png")
        return summary


class ImageStudy:
    """A cache of 2D images: splits of images (random) or groups (grouped), per-image overlap scores
    overall and per category, the long summary."""

    headline = "jaccard"

    def __init__(self, opts: AblationOptions, table: dict):
        from src.data.image_cache import ImageCache
        from src.engine.config import SLICE_FIELDS, changed_fields

        self.opts = opts
        self.train_cache = opts.cache
        self.cache = ImageCache(opts.cache)
        self.images = self.cache.table()
        if len(self.images) < 2:
            raise DataError(f"--base: the cache {opts.cache} holds {len(self.images)} labelled image(s); an ablation needs two")
        self.categories = sorted({s for s in self.images["stratum"] if isinstance(s, str) and s})
        for label, config in table.items():  # the base first: a variant's slice option is its --vary
            slice_options = changed_fields(config, SLICE_FIELDS)
            if slice_options:
                where = "--base" if label == "base" else f"--vary {label}"
                raise DataError(f"{where}: {flag(slice_options[0])} is an option of slice volumes; "
                                f"{opts.cache} holds 2D images")

    def write_splits(self) -> list[Path]:
        paths = []
        for r in range(self.opts.repeats):
            val = draw_image_split(self.images, self.opts.split_mode, self.opts.split_val_fraction, self.opts.seed + r)
            paths.append(_split_path(self.opts, r))
            with atomic_path(paths[-1], suffix=".csv") as tmp:
                image_split_table(self.images, val, self.opts.split_mode).to_csv(tmp, index=False)
        return paths

    def score(self, fold: FoldDir) -> dict[str, float]:
        """Overall and per-category means of the per-image stats (`jaccard`, `jaccard@<category>`, ...)
        and image counts (`images`, `images@<category>`), the run's OOF thresholded at its --threshold."""
        from src.data.image_samples import label_map
        from src.metrics.overlap import OVERALL, STATS, image_table, summary

        record = fold.read_config()
        files, val = fold.oof_files(), list(record.val_case_days)
        missing = [key for key in val if key not in files]
        if missing or not val:
            raise DataError(f"{fold.path}: no OOF prediction for {missing[0] if missing else 'any image'}")
        threshold = float(record.config.get("threshold", 0.5))
        entries = self.images.set_index("key")

        def images():
            for key in val:
                probs = np.asarray(load_prediction(files[key], image=True), np.float32)
                stratum = entries.at[key, "stratum"]
                yield key, stratum if isinstance(stratum, str) else "", label_map(probs, threshold), np.asarray(
                    self.cache.load(key)[1])

        out: dict[str, float] = {}
        for row in summary(image_table(images(), self.cache.description.labels)).itertuples(index=False):
            category = None if row.stratum == OVERALL else row.stratum
            out[category_column("images", category)] = int(row.images)
            out.update({category_column(s, category): float(getattr(row, s)) for s in STATS})
        return out

    def report(self, long: pd.DataFrame, order: list[str], out: Path) -> pd.DataFrame:
        summary = summarise_images(long, order, self.categories, self.opts.confidence)
        _write_image_summary(summary, out)
        plot_images(summary, order, out / "ablation.png")
        return summary


def study_of(opts: AblationOptions, table: dict, log=print) -> VolumeStudy | ImageStudy:
    """The study that fits the base's data, its cache prepared first when it holds nothing yet."""
    ensure_prepared(opts.base_config.data_dir, opts.cache, log)
    return ImageStudy(opts, table) if is_image_cache(opts.cache) else VolumeStudy(opts)


# ---- cells -------------------------------------------------------------------------------------------
def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", label)[:60]


def run_ablation(opts: AblationOptions, log=print) -> pd.DataFrame:
    """Train and score every cell (skipping scored ones); writes cells.csv, ablation.csv, ablation.md,
    ablation.png under opts.out and returns the summary (wide on GI, long by category on 2D)."""
    out = Path(opts.out)
    table = variants(opts)
    study = study_of(opts, table, log)
    splits = study.write_splits()
    planned, steps = [], []  # (label, split, run name, record path) of every cell; trainings of unscored ones
    for label, config in table.items():
        args = changed(config)
        for r, split_csv in enumerate(splits):
            key = json.dumps([to_flags(args), opts.split_mode, opts.split_val_fraction, opts.seed + r], sort_keys=True)
            name = f"{_slug(label)}-{hashlib.sha1(key.encode()).hexdigest()[:8]}-r{r}"
            record_path = out / "cells" / f"{name}.json"
            planned.append((label, r, name, record_path))
            if not record_path.is_file():
                tokens = (*to_flags({**args, "cache_dir": str(study.train_cache)}), "--stage", "seg2d", "--fold", "0",
                          "--folds-csv", str(split_csv), "--out", str(out / "runs"), "--name", name,
                          "--seed", str(config.seed + r))
                steps.append(Step(name, "src.train", tokens, (str(fold_dir(out / "runs", name, 0).done_path),),
                                  resumable=True, log=str(out / "logs" / f"{name}.log"), gpus=int(config.device != "cpu")))
    with open_executor(opts.executor, opts.address) as executor:
        seconds = {name: s for name, _, s in run_graph(steps, OutputLedger(), executor)}
    cells = []
    for k, (label, r, name, record_path) in enumerate(planned, 1):
        where = f"[{k}/{len(planned)}] {label} split {r}"
        if record_path.is_file():
            record = read_json_object(record_path, "ablation cell")
            log(f"{where}: {study.headline} {record[study.headline]:.4f} (finished earlier)")
        else:
            record = {"variant": label, "repeat": r, "run": name, "train_s": seconds[name],
                      **study.score(fold_dir(out / "runs", name, 0))}
            write_json_atomic(record_path, record)
            log(f"{where}: {study.headline} {record[study.headline]:.4f} (trained in {seconds[name]:.1f} s)")
        cells.append(record)
    long = pd.DataFrame(cells)
    with atomic_path(out / "cells.csv", suffix=".csv") as tmp:
        long.to_csv(tmp, index=False)
    return study.report(long, list(table), out)


# ---- the summary ---------------------------------------------------------------------------------------
def per_class_columns() -> list[str]:
    from src.research.evaluation import CLASS_METRICS

    return [f"{m}_{c}" for m in CLASS_METRICS for c in CLASSES]


def category_column(stat: str, category: str | None) -> str:
    """The cell column of a 2D stat: `jaccard` overall (category None), `jaccard@<category>` per category."""
    return stat if category is None else f"{stat}@{category}"


def paired_interval(diffs: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """(mean, low, high) of paired differences: mean +- t((1 + confidence) / 2, n - 1) sd / sqrt(n)."""
    from scipy import stats

    diffs = np.asarray(diffs, float)
    diffs = diffs[~np.isnan(diffs)]
    if diffs.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(diffs.mean())
    if diffs.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + confidence) / 2, diffs.size - 1) * diffs.std(ddof=1) / math.sqrt(diffs.size))
    return mean, mean - half, mean + half


def spread(cells: pd.DataFrame, metrics: Sequence[str], sd: str = "std") -> dict[str, float]:
    """`<m>_mean` and `<m>_<sd>` (sample sd, NaN for fewer than two values) of each metric over the
    cells' rows, NaN left out; a metric the cells lack is NaN."""
    out = {}
    for m in metrics:
        values = cells[m] if m in cells else pd.Series(dtype=float)
        out[f"{m}_mean"], out[f"{m}_{sd}"] = float(values.mean()), float(values.std(ddof=1))
    return out


def paired_differences(long: pd.DataFrame, order: list[str], metrics: Sequence[str],
                       confidence: float) -> dict[str, dict]:
    """Per variant: `d_<m>`, `d_<m>_lo`, `d_<m>_hi` (paired_interval of its per-split differences from the
    base, on the splits both have) of each metric, and `beyond_noise` ("yes"/"no": whether the interval
    of metrics[0] excludes 0; "" for the base and where there is no interval)."""
    base = long[long["variant"] == "base"].set_index("repeat")
    out = {}
    for label in order:
        cells = long[long["variant"] == label].set_index("repeat")
        row: dict = {}
        for m in metrics:
            if label == "base":
                row[f"d_{m}"] = row[f"d_{m}_lo"] = row[f"d_{m}_hi"] = math.nan
                continue
            shared = cells.index.intersection(base.index)
            row[f"d_{m}"], row[f"d_{m}_lo"], row[f"d_{m}_hi"] = paired_interval(
                cells.loc[shared, m].to_numpy() - base.loc[shared, m].to_numpy(), confidence)
        lo, hi = row[f"d_{metrics[0]}_lo"], row[f"d_{metrics[0]}_hi"]
        row["beyond_noise"] = "" if label == "base" or math.isnan(lo) else ("yes" if lo > 0 or hi < 0 else "no")
        out[label] = row
    return out


def summarise(long: pd.DataFrame, order: list[str], confidence: float = 0.95) -> pd.DataFrame:
    """GI: one row per variant: n, mean and std of the score and class metrics, the paired differences."""
    metrics = [*SUMMARY_METRICS, *per_class_columns()]
    paired = paired_differences(long, order, GI_PAIRED, confidence)
    rows = []
    for label in order:
        cells = long[long["variant"] == label]
        rows.append({"variant": label, "n": len(cells), **spread(cells, metrics), **paired[label]})
    return pd.DataFrame(rows)


def summarise_images(long: pd.DataFrame, order: list[str], categories: Sequence[str],
                     confidence: float = 0.95) -> pd.DataFrame:
    """2D: one row per variant and category ("all", then `categories`): n (splits whose validation held
    it), `<stat>_mean` and `<stat>_sd` over the splits of Dice, Jaccard, precision and recall; on the
    "all" rows the paired differences of overall Jaccard and Dice from the base (blank elsewhere)."""
    from src.metrics.overlap import OVERALL, STATS

    paired = paired_differences(long, order, IMAGE_PAIRED, confidence)
    blank = dict.fromkeys(paired["base"], math.nan) | {"beyond_noise": ""}
    rows = []
    for label in order:
        cells = long[long["variant"] == label]
        for category in (OVERALL, *categories):
            columns = {category_column(s, None if category == OVERALL else category): s for s in STATS}
            stats = cells.reindex(columns=list(columns)).rename(columns=columns)
            rows.append({"variant": label, "category": category, "n": int(stats["jaccard"].notna().sum()),
                         **spread(stats, STATS, "sd"), **(paired[label] if category == OVERALL else blank)})
    return pd.DataFrame(rows)


def _pm(mean: float, std: float) -> str:
    return "" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}" if not math.isnan(std) else f"{mean:.3f}"


def _ci(d: float, lo: float, hi: float) -> str:
    return "" if math.isnan(d) else f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _paired_columns(summary: pd.DataFrame, metrics: Sequence[str]) -> dict[str, list[str]]:
    """The markdown columns of the paired differences: `Δ <metric> [CI]` each, then `beyond noise`."""
    columns = {f"Δ {TITLES[m]} [CI]": [_ci(*v) for v in zip(summary[f"d_{m}"], summary[f"d_{m}_lo"], summary[f"d_{m}_hi"])]
               for m in metrics}
    return {**columns, "beyond noise": list(summary["beyond_noise"])}


def _write_summary(summary: pd.DataFrame, out: Path) -> None:
    from src.research.evaluation import write_tables

    md = pd.DataFrame({
        "variant": summary["variant"], "n": summary["n"],
        "score": [_pm(m, s) for m, s in zip(summary["score_mean"], summary["score_std"])],
        "Jaccard": [_pm(m, s) for m, s in zip(summary["jaccard_mean"], summary["jaccard_std"])],
        **{f"Dice {c}": [_pm(m, s) for m, s in zip(summary[f"dice_{c}_mean"], summary[f"dice_{c}_std"])] for c in CLASSES},
        **_paired_columns(summary, GI_PAIRED)})
    write_tables(summary, out / "ablation.csv", out / "ablation.md", md_table=md)


def _write_image_summary(summary: pd.DataFrame, out: Path) -> None:
    """ablation.csv (the long summary) and ablation.md: the variant x category table of Jaccard and Dice
    (mean ± sd over the splits), then the paired differences from the base."""
    from src.metrics.overlap import OVERALL
    from src.research.evaluation import markdown

    table = pd.DataFrame({
        "variant": summary["variant"], "category": summary["category"], "n": summary["n"],
        "Jaccard": [_pm(m, s) for m, s in zip(summary["jaccard_mean"], summary["jaccard_sd"])],
        "Dice": [_pm(m, s) for m, s in zip(summary["dice_mean"], summary["dice_sd"])]})
    overall = summary[summary["category"] == OVERALL].reset_index(drop=True)
    paired = pd.DataFrame({"variant": overall["variant"], "n": overall["n"], **_paired_columns(overall, IMAGE_PAIRED)})
    with atomic_path(out / "ablation.csv", suffix=".csv") as tmp:
        summary.to_csv(tmp, index=False)
    n = int(overall["n"].max()) if len(overall) else 0
    write_text_atomic(out / "ablation.md", "\n".join([
        f"Per category: mean ± sd over {n} splits (n: splits whose validation held the category)", "",
        markdown(table), f"Paired difference from the base (overall; beyond noise: the {TITLES[IMAGE_PAIRED[0]]} interval excludes 0)", "",
        markdown(paired)]))


def plot(long: pd.DataFrame, order: list[str], path: Path) -> None:
    """Mean and std over the splits: the score, then per class Dice, Jaccard, precision, recall, accuracy."""
    plt = _pyplot()
    from src.research.evaluation import CLASS_METRICS

    fig, axes = plt.subplots(1, 1 + len(CLASS_METRICS), figsize=(3.0 * (1 + len(CLASS_METRICS)), 3.6))
    x = np.arange(len(order))
    grouped = long.groupby("variant")
    means, stds = grouped.mean(numeric_only=True).reindex(order), grouped.std(numeric_only=True).reindex(order)
    axes[0].bar(x, means["score"], yerr=stds["score"], color="0.5", capsize=3)
    axes[0].set_title("competition score", fontsize=9)
    width = 0.8 / len(CLASSES)
    for ax, metric in zip(axes[1:], CLASS_METRICS):
        for i, c in enumerate(CLASSES):
            col = f"{metric}_{c}"
            ax.bar(x + (i - 1) * width, means[col], width, yerr=stds[col], capsize=2, label=c)
        ax.set_title(metric, fontsize=9)
    for ax in axes:
        ax.set_xticks(x, order, rotation=45, ha="right", fontsize=7)
        ax.set_ylim(0, 1.05)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"mean ± std over {long['repeat'].nunique()} splits", fontsize=10)
    _save(fig, path)


def plot_images(summary: pd.DataFrame, order: list[str], path: Path) -> None:
    """Per category ("all" first), the Jaccard of each variant: bars of the mean ± sd over the splits."""
    plt = _pyplot()
    categories = list(dict.fromkeys(summary["category"]))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(categories) + 1.5), 3.8))
    x = np.arange(len(categories))
    width = 0.8 / len(order)
    for i, label in enumerate(order):
        rows = summary[summary["variant"] == label].set_index("category").reindex(categories)
        ax.bar(x + (i - (len(order) - 1) / 2) * width, rows["jaccard_mean"], width, yerr=rows["jaccard_sd"].fillna(0),
               capsize=2, label=label, color=plt.get_cmap("tab10")(i % 10))
    ax.set_xticks(x, categories, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Jaccard")
    ax.legend(fontsize=7)
    n = int(summary["n"].max()) if len(summary) else 0
    ax.set_title(f"Jaccard per category: mean ± sd over {n} splits", fontsize=10)
    _save(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)

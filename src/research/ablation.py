"""Ablation over repeated splits: every variant is trained on the same R seeded 80/20 splits and
compared with the base on each, so differences come with a paired confidence interval.

A variant is the base train config (its flags parsed into Seg2DConfig) with one field changed by
`dataclasses.replace`, so the config validates it (`--vary lr=1e-3,1e-2` gives two); the base is a
variant too. A split is `random` (case-days drawn at random: two days of a patient may fall
on both sides, as the original studies' image-level splits did) or `grouped` (whole cases). Split r is
drawn with seed `seed + r` and written as a folds file (fold 0 = validation, fold 1 = training), and
every (variant, split) cell is trained by `python -m src.train --fold 0` with training seed
`base seed + r`. Random splits train on an alias of the cache in which each case-day is its own case
(`case1_day3` -> `case1003_day3`, files linked, not copied), since a folds file groups by case.

Each cell is scored from its run's OOF probabilities against the cache's truth at threshold 0.5: the
competition score (and its Dice and Hausdorff terms), and per class the pixel-level Dice, Jaccard,
precision, recall and accuracy over all validation voxels. The summary has mean and std over the
splits per variant, and for score and mean Jaccard the variant's paired difference from the base:
mean of the per-split differences +- t(confidence, R - 1) x sd / sqrt(R); `beyond_noise` says whether
that interval excludes 0.

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

import numpy as np
import pandas as pd

from src.core.artifacts import CacheEntryFiles, fold_dir, load_prediction
from src.core.atomic import atomic_path, write_json_atomic
from src.core.errors import DataError
from src.core.ids import CLASSES, case_day_key
from src.core.options import changed, flag, parse_flags, parse_value, to_flags
from src.core.readers import read_json_object
from src.data.preparation import ensure_prepared
from src.orchestration.execution import address_field, check_executor, executor_field, open_executor, run_graph
from src.orchestration.steps import OutputLedger, Step

SPLITS = ("random", "grouped")
OWNED = ("fold", "folds_csv", "out", "name", "seed", "stage", "resume", "list_archs")  # set per split and cell
SUMMARY_METRICS = ("score", "comp_dice", "hausdorff", "jaccard", "dice")


def _owned(name: str) -> DataError:
    return DataError(f"--base: {flag(name)} is set by the ablation itself (per split and cell)")


def parse_base(tokens: tuple[str, ...]):
    """The 2.5D train config of `--arch A --lr 1e-3 --no-amp ...` (validated by the config itself)."""
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


@dataclass(frozen=True)
class AblationOptions:
    """What `python -m src.ablate` was asked: the base's train arguments, the varied flags, the splits."""

    base: tuple[str, ...] = field(metadata={
        "parse": split_base, "help": 'train arguments of the base, one string: "--arch A --epochs 2"'})
    vary: tuple[tuple[str, tuple[str, ...]], ...] = field(default=(), metadata={
        "parse": parse_vary, "append": True, "metavar": "FLAG=V1,V2", "help": "a train flag and its values"})
    repeats: int = field(default=3, metadata={"help": "seeded splits per variant"})
    split: str = field(default="random", metadata={"help": "random (case-days) | grouped (by case)"})
    val_fraction: float = 0.2
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
        if self.split not in SPLITS:
            raise DataError(f"--split: expected random or grouped, got {self.split!r}")
        if not 0 < self.val_fraction < 1:
            raise DataError(f"--val-fraction: must be in (0, 1), got {self.val_fraction}")
        if not 0 < self.confidence < 1:
            raise DataError(f"--confidence: must be in (0, 1), got {self.confidence}")

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


def draw_split(case_days: list[str], mode: str, val_fraction: float, seed: int) -> list[str]:
    """The validation case-days of one split (sorted)."""
    rng = np.random.default_rng(seed)
    n_val = max(1, round(val_fraction * len(case_days)))
    if mode == "random":
        val = list(rng.permutation(case_days)[:n_val])
    else:
        by_case: dict[int, list[str]] = {}
        for cd in case_days:
            by_case.setdefault(case_day_key(cd)[0], []).append(cd)
        if len(by_case) < 2:
            raise DataError("--split grouped: the data has fewer than 2 cases")
        val = []
        for case in rng.permutation(sorted(by_case))[:-1]:  # at least one case stays for training
            if len(val) >= n_val:
                break
            val += by_case[int(case)]
    return sorted(val, key=case_day_key)


def _write_split(path: Path, case_days: list[str], val: list[str], aliased: bool) -> None:
    rows = []
    for cd in case_days:
        name = alias(cd) if aliased else cd
        case, day = case_day_key(name)
        rows.append((case, day, name, 0 if cd in val else 1))
    with atomic_path(path, suffix=".csv") as tmp:
        pd.DataFrame(rows, columns=["case", "day", "case_day", "fold"]).to_csv(tmp, index=False)


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


# ---- cells -------------------------------------------------------------------------------------------
def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", label)[:60]


def _score_cell(fold, cache_dir: Path) -> dict[str, float]:
    from src.data.volumes import VolumeCache
    from src.research.evaluation import evaluate

    cache = VolumeCache(cache_dir)
    files = fold.oof_files()
    val = list(fold.read_config().val_case_days)
    missing = [cd for cd in val if cd not in files]
    if missing or not val:
        raise DataError(f"{fold.path}: no OOF prediction for {missing[0] if missing else 'any case-day'}")
    return evaluate((cd, load_prediction(files[cd]).astype(np.float32), np.asarray(cache.load(cd).mask)) for cd in val)


def run_ablation(opts: AblationOptions, log=print) -> pd.DataFrame:
    """Train and score every cell (skipping scored ones); writes cells.csv, ablation.csv, ablation.md,
    ablation.png under opts.out and returns the summary."""
    from src.data.volumes import VolumeCache

    out = Path(opts.out)
    case_days = VolumeCache(ensure_prepared(opts.base_config.data_dir, opts.cache, log)).case_days()
    if len(case_days) < 2:
        raise DataError(f"--base: the cache {opts.cache} holds {len(case_days)} case-day(s); an ablation needs two")
    aliased = opts.split == "random"
    cache = out / "cache_aliased" if aliased else opts.cache
    if aliased:
        _alias_cache(opts.cache, cache, case_days)
    splits = []
    for r in range(opts.repeats):
        val = draw_split(case_days, opts.split, opts.val_fraction, opts.seed + r)
        path = out / "splits" / f"{opts.split}_{opts.val_fraction:g}_seed{opts.seed + r}.csv"
        _write_split(path, case_days, val, aliased)
        splits.append(path)
    table = variants(opts)
    planned, steps = [], []  # (label, split, run name, record path) of every cell; trainings of unscored ones
    for label, config in table.items():
        args = changed(config)
        for r, split_csv in enumerate(splits):
            key = json.dumps([to_flags(args), opts.split, opts.val_fraction, opts.seed + r], sort_keys=True)
            name = f"{_slug(label)}-{hashlib.sha1(key.encode()).hexdigest()[:8]}-r{r}"
            record_path = out / "cells" / f"{name}.json"
            planned.append((label, r, name, record_path))
            if not record_path.is_file():
                tokens = (*to_flags({**args, "cache_dir": str(cache)}), "--stage", "seg2d", "--fold", "0",
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
            log(f"{where}: score {record['score']:.4f} (finished earlier)")
        else:
            record = {"variant": label, "repeat": r, "run": name, "train_s": seconds[name],
                      **_score_cell(fold_dir(out / "runs", name, 0), cache)}
            write_json_atomic(record_path, record)
            log(f"{where}: score {record['score']:.4f} (trained in {seconds[name]:.1f} s)")
        cells.append(record)
    long = pd.DataFrame(cells)
    with atomic_path(out / "cells.csv", suffix=".csv") as tmp:
        long.to_csv(tmp, index=False)
    summary = summarise(long, list(table), opts.confidence)
    _write_summary(summary, out)
    plot(long, list(table), out / "ablation.png")
    return summary


# ---- the summary ---------------------------------------------------------------------------------------
def per_class_columns() -> list[str]:
    from src.research.evaluation import CLASS_METRICS

    return [f"{m}_{c}" for m in CLASS_METRICS for c in CLASSES]


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


def summarise(long: pd.DataFrame, order: list[str], confidence: float = 0.95) -> pd.DataFrame:
    metrics = [*SUMMARY_METRICS, *per_class_columns()]
    base = long[long["variant"] == "base"].set_index("repeat")
    rows = []
    for label in order:
        cells = long[long["variant"] == label].set_index("repeat")
        row: dict = {"variant": label, "n": len(cells)}
        for m in metrics:
            row[f"{m}_mean"] = float(cells[m].mean())
            row[f"{m}_std"] = float(cells[m].std(ddof=1)) if len(cells) > 1 else math.nan
        for m in ("score", "jaccard"):
            if label == "base":
                row[f"d_{m}"] = row[f"d_{m}_lo"] = row[f"d_{m}_hi"] = math.nan
                continue
            shared = cells.index.intersection(base.index)
            row[f"d_{m}"], row[f"d_{m}_lo"], row[f"d_{m}_hi"] = paired_interval(
                cells.loc[shared, m].to_numpy() - base.loc[shared, m].to_numpy(), confidence)
        lo, hi = row["d_score_lo"], row["d_score_hi"]
        row["beyond_noise"] = "" if label == "base" or math.isnan(lo) else ("yes" if lo > 0 or hi < 0 else "no")
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean: float, std: float) -> str:
    return "" if math.isnan(mean) else f"{mean:.3f} ± {std:.3f}" if not math.isnan(std) else f"{mean:.3f}"


def _ci(d: float, lo: float, hi: float) -> str:
    return "" if math.isnan(d) else f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _write_summary(summary: pd.DataFrame, out: Path) -> None:
    from src.research.evaluation import write_tables

    md = pd.DataFrame({
        "variant": summary["variant"], "n": summary["n"],
        "score": [_pm(m, s) for m, s in zip(summary["score_mean"], summary["score_std"])],
        "Jaccard": [_pm(m, s) for m, s in zip(summary["jaccard_mean"], summary["jaccard_std"])],
        **{f"Dice {c}": [_pm(m, s) for m, s in zip(summary[f"dice_{c}_mean"], summary[f"dice_{c}_std"])] for c in CLASSES},
        "Δ score [CI]": [_ci(*v) for v in zip(summary["d_score"], summary["d_score_lo"], summary["d_score_hi"])],
        "Δ Jaccard [CI]": [_ci(*v) for v in zip(summary["d_jaccard"], summary["d_jaccard_lo"], summary["d_jaccard_hi"])],
        "beyond noise": summary["beyond_noise"]})
    write_tables(summary, out / "ablation.csv", out / "ablation.md", md_table=md)


def plot(long: pd.DataFrame, order: list[str], path: Path) -> None:
    """Mean and std over the splits: the score, then per class Dice, Jaccard, precision, recall, accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)

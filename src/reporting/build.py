"""An HTML report of training runs: curves, out-of-fold scores, overlays, PR curves, ensemble scores.

`python -m src.report --runs runs/A [runs/B ...] [--ensemble ensemble.json] --out reports/NAME`

For each run folder (runs/<name>/fold*/): the training curves of log.csv; for a segmentation run the
score per case-day (oof_scores.csv, or the OOF probabilities thresholded at the run's threshold and
scored with src.metric), the Dice per class, and truth/prediction contours on the slices with the
most labelled area of the two worst and two best case-days; for a classifier run (stage "cls", OOF
(Z, 3) presence probabilities) src.reporting.presence's table and precision-recall curve per class. With --ensemble, the scores of
ensemble.json. The page is plain self-contained HTML with PNG figures beside it; the --out folder
is built in a temporary sibling and swapped in only when complete.
"""
from __future__ import annotations

import html
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from src.core.artifacts import CaseDayFiles, FoldDir, RunDir
from src.core.atomic import atomic_dir
from src.core.errors import DataError
from src.core.ids import CLASSES
from src.data.samples import intensity_window, normalise
from src.data.volumes import VolumeCache, default_cache_dir
from src.ensembling import contributions
from src.ensembling.ensemble_file import load_ensemble
from src.inference.runs import check_complete
from src.metrics.competition import (
    DICE_WEIGHT,
    HAUSDORFF_WEIGHT,
    dice_rows,
    score_volumes,
)
from src.reporting import figures, presence
from src.reporting.options import ReportOptions

CLS_STAGE = "cls"
WORST_BEST = 2  # case-days shown at each end of the ranking
SLICES_PER_CASE_DAY = 3
METRIC_KEYS = ("score", "dice", "hausdorff")

# on load, the page records how many of its images decoded (read back by the headless-browser test)
IMAGE_CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", ok + "/" + images.length);
});
</script>"""
STYLE = """<style>
body { font-family: sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1em 0; } img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
</style>"""


# ---- runs ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fold:
    """One fold folder of a run: its config block, log and done.json (None while unfinished)."""

    name: str
    dir: FoldDir
    config: dict
    log: pd.DataFrame
    done: dict | None

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def threshold(self) -> float:
        return float(self.config.get("threshold", 0.5))

    def oof_files(self) -> list[tuple[str, Path]]:
        return [(cd, p) for cd, p in self.dir.oof_files().items() if p.suffix == ".npy"]

    def best_score(self) -> float:
        """done.json's best_score, else the best val_score of log.csv, else NaN."""
        best = (self.done or {}).get("best_score")
        if best is None and "val_score" in self.log and self.log["val_score"].notna().any():
            best = self.log["val_score"].max()
        best = float("nan") if best is None else float(best)
        return best if math.isfinite(best) else float("nan")


@dataclass(frozen=True)
class Run:
    name: str
    path: Path
    folds: tuple[Fold, ...]

    @property
    def stage(self) -> str:
        return str(self.folds[0].config.get("stage", ""))

    @property
    def arch(self) -> str:
        return str(self.folds[0].config.get("arch", ""))


def _read_csv(path: Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from None
    missing = [c for c in required if c not in table]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return table


def load_fold(fold: FoldDir) -> Fold:
    try:
        log = fold.read_log()
    except (OSError, ValueError) as exc:
        raise DataError(f"{fold.log_path}: cannot read CSV ({exc})") from None
    return Fold(fold.fold, fold, fold.read_config().config, pd.DataFrame() if log is None else log, fold.read_done())


def load_run(path: str | Path, allow_incomplete: bool = False) -> Run:
    """A run folder runs/<name> with configured folds inside; unfinished ones only if allowed."""
    run = RunDir(path)
    folds = run.folds(require_weights=False)
    for fold in folds.values():
        check_complete(fold, allow_incomplete)
    return Run(run.name, run.path, tuple(load_fold(f) for f in folds.values()))


def resolve_cache(run: Run, cache_dir: str | Path | None, data_dir: str | Path | None) -> VolumeCache:
    """--cache-dir, else the cache of --data-dir, else the run's config cache_dir, else its data_dir's."""
    config = run.folds[0].config
    if cache_dir:
        return VolumeCache(cache_dir)
    if data_dir:
        return VolumeCache(default_cache_dir(data_dir))
    if config.get("cache_dir"):
        return VolumeCache(config["cache_dir"])
    if config.get("data_dir"):
        return VolumeCache(default_cache_dir(config["data_dir"]))
    raise DataError(f"{run.folds[0].dir.config_path}: no data_dir or cache_dir; pass --cache-dir")


def _load_oof(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        probs = np.load(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the OOF array ({exc})") from None
    if probs.shape != shape:
        raise DataError(f"{path}: OOF shape {probs.shape}, expected {shape} from the cache")
    return probs


def _truth(cache: VolumeCache, case_day: str) -> np.ndarray:
    mask = cache.load(case_day).mask
    if mask is None:
        raise DataError(f"{CaseDayFiles.of(cache.root, 'train', case_day).mask}: not in the cache (a test case-day?)")
    return np.asarray(mask) > 0


# ---- segmentation runs ---------------------------------------------------------------------------
@dataclass
class SegmentationResult:
    """OOF scores of a segmentation run: per case-day (worst first) and Dice per class."""

    table: pd.DataFrame  # case_day, fold, dice, hausdorff, score (+ the CSV's other columns)
    class_dice: pd.Series  # index CLASSES
    sources: dict[str, str] = field(default_factory=dict)  # fold -> "oof_scores.csv" | "recomputed"


def _fold_pairs(fold: Fold, cache: VolumeCache) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(case_day, thresholded prediction, truth) of a fold's OOF volumes."""
    for case_day, path in fold.oof_files():
        truth = _truth(cache, case_day)
        yield case_day, _load_oof(path, truth.shape) > fold.threshold, truth


def _tap_dice(pairs: Iterator, sink: list) -> Iterator:
    """Pass pairs through, appending each case-day's Dice rows (Z, 3) to sink."""
    for case_day, pred, truth in pairs:
        sink.append(dice_rows(pred, truth))
        yield case_day, pred, truth


def case_day_score(table: pd.DataFrame) -> pd.Series:
    """0.4 x Dice + 0.6 x (1 - Hausdorff) per row, with the metric's empty-set convention."""
    return DICE_WEIGHT * table["dice"].fillna(1.0) + HAUSDORFF_WEIGHT * (1.0 - table["hausdorff"].fillna(0.0))


def evaluate_segmentation(run: Run, cache: VolumeCache) -> SegmentationResult | None:
    """Per-case-day scores of every fold's OOF (its oof_scores.csv, else recomputed), Dice per class;
    None when the run has no OOF predictions."""
    tables, rows, sources = [], [], {}
    for fold in run.folds:
        if not fold.oof_files():
            continue
        pairs = _fold_pairs(fold, cache)
        csv = fold.dir.oof_scores_path
        if csv.exists():
            rows.extend(dice_rows(pred, truth) for _, pred, truth in pairs)
            table, sources[fold.name] = _read_csv(csv, ("case_day", "dice", "hausdorff")), csv.name
        else:
            table, sources[fold.name] = score_volumes(_tap_dice(pairs, rows)).per_case_day, "recomputed"
        tables.append(table.assign(fold=fold.name))
    if not tables:
        return None
    table = pd.concat(tables, ignore_index=True)
    table["score"] = case_day_score(table)
    table = table.sort_values(["score", "case_day"], kind="stable").reset_index(drop=True)
    with warnings.catch_warnings():  # a class never present nor predicted: NaN, no warning
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        per_class = np.nanmean(np.concatenate(rows), axis=0)
    return SegmentationResult(table, pd.Series(per_class, index=list(CLASSES)), sources)


def overlay_panels(run: Run, cache: VolumeCache, case_day: str) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """The slices with the largest truth + prediction area of a case-day: (z, image, truth, pred)."""
    found = next(((f, p) for f in run.folds for cd, p in f.oof_files() if cd == case_day), None)
    if found is None:
        raise DataError(f"{run.path}: the OOF scores list {case_day} but no fold has its OOF prediction")
    fold, path = found
    vol = cache.load(case_day)
    truth = _truth(cache, case_day)
    pred = _load_oof(path, truth.shape) > fold.threshold
    area = truth.sum(axis=(1, 2, 3)) + pred.sum(axis=(1, 2, 3))
    chosen = np.sort(np.argsort(-area, kind="stable")[:SLICES_PER_CASE_DAY])
    window = intensity_window(vol.image)
    return [(int(z), normalise(vol.image[z], window), truth[z], pred[z]) for z in chosen]


def extremes(table: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, case_day) of the worst and best case-days of a worst-first table, each once."""
    n = len(table)
    picks = [(f"worst {i + 1}", i) for i in range(min(WORST_BEST, n))]
    picks += [(f"best {i + 1}", n - 1 - i) for i in range(min(WORST_BEST, n)) if n - 1 - i >= WORST_BEST]
    return [(label, table["case_day"].iloc[i]) for label, i in picks]


# ---- classifier runs -----------------------------------------------------------------------------
def presence_oof(run: Run, cache: VolumeCache) -> tuple[np.ndarray, np.ndarray] | None:
    """(N, 3) OOF presence probabilities and truth over every fold of a classifier run; None without OOF."""
    files = {cd: path for fold in run.folds for cd, path in fold.oof_files()}
    return presence.load_presence(files, cache) if files else None


# ---- ensemble ------------------------------------------------------------------------------------
def ensemble_tables(record: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """From ensemble.json's "scores", whatever keys it has but the contributions (contribution_table):
    (one row per entry holding score/dice/hausdorff, named by its key path), (every other scalar as
    name, value)."""
    metric_rows, other_rows = [], []

    def walk(name: str, value) -> None:
        if isinstance(value, dict) and any(k in value for k in METRIC_KEYS):
            metric_rows.append({"name": name, **{k: v for k, v in value.items() if not isinstance(v, (dict, list))}})
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{name} / {key}" if name else str(key), item)
        else:
            other_rows.append({"name": name, "value": value})

    scores = record.get("scores", {})
    walk("", {k: v for k, v in scores.items() if k != contributions.KEY} if isinstance(scores, dict) else scores)
    metrics = pd.DataFrame(metric_rows)
    if not metrics.empty:
        first = ["name"] + [k for k in METRIC_KEYS if k in metrics]
        metrics = metrics[first + [c for c in metrics if c not in first]]
    return metrics, pd.DataFrame(other_rows, columns=["name", "value"])


CONTRIBUTION_COLUMNS = {"component": "component", "score": "held-out score without it",
                        "delta": "delta (what it wins)", "note": "note"}


def contribution_table(record: dict) -> pd.DataFrame:
    """ensemble.json's contribution rows (src.ensembling.contributions), empty when it has none."""
    scores = record.get("scores")
    rows = scores.get(contributions.KEY) if isinstance(scores, dict) else None
    rows = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    table = pd.DataFrame([[r.get(k) for k in CONTRIBUTION_COLUMNS] for r in rows],
                         columns=list(CONTRIBUTION_COLUMNS.values()))
    numbers = [CONTRIBUTION_COLUMNS[k] for k in ("score", "delta")]
    table[numbers] = table[numbers].apply(pd.to_numeric, errors="coerce").astype(float)  # None: an empty cell
    return table


# ---- the page ------------------------------------------------------------------------------------
def summary_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: stage, arch, best validation score per fold, their mean."""
    rows = []
    for run in runs:
        scores = {f"fold {f.name}": f.best_score() for f in run.folds}
        finite = [s for s in scores.values() if math.isfinite(s)]
        rows.append({"run": run.name, "stage": run.stage, "arch": run.arch, **scores,
                     "mean": float(np.mean(finite)) if finite else float("nan")})
    table = pd.DataFrame(rows)
    return table[[c for c in table if c != "mean"] + ["mean"]]


def _table_html(table: pd.DataFrame) -> str:
    return table.to_html(index=False, border=0, na_rep="", float_format="{:.4f}".format, escape=True)


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


class Page:
    """Collects HTML blocks and the PNG figures written beside them."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.blocks: list[str] = []
        self.figures: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(f"<h{level}>{_esc(text)}</h{level}>")

    def text(self, text: str) -> None:
        self.blocks.append(f"<p>{_esc(text)}</p>")

    def table(self, table: pd.DataFrame) -> None:
        self.blocks.append(_table_html(table))

    def figure(self, name: str, alt: str, draw, *args) -> None:
        """draw(*args, path) writes the PNG `name`; the page shows it with alt text and caption."""
        draw(*args, self.folder / name)
        self.figures.append(name)
        self.blocks.append(f'<figure><img src="{_esc(name)}" alt="{_esc(alt)}">'
                           f"<figcaption>{_esc(alt)}</figcaption></figure>")

    def render(self, title: str) -> str:
        body = "\n".join(self.blocks)
        return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_esc(title)}</title>\n'
                f"{STYLE}\n{IMAGE_CHECK}\n</head>\n<body>\n<h1>{_esc(title)}</h1>\n{body}\n</body>\n</html>\n")


def _slug(index: int, name: str) -> str:
    return f"{index:02d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}"


@dataclass
class RunReport:
    run: Run
    segmentation: SegmentationResult | None = None
    presence: pd.DataFrame | None = None  # src.presence.report_table


def _segmentation_section(page: Page, run: Run, cache: VolumeCache, slug: str) -> SegmentationResult | None:
    result = evaluate_segmentation(run, cache)
    if result is None:
        page.text("No out-of-fold predictions (oof/*.npy) in this run.")
        return None
    sources = ", ".join(f"fold {f}: {s}" for f, s in result.sources.items())
    page.heading("Score per case-day (out of fold)", 3)
    page.text(f"{len(result.table)} case-days, worst first ({sources}).")
    page.figure(f"{slug}_case_days.png", f"{run.name}: score per case-day, Dice and Hausdorff parts, worst first",
                figures.case_day_scores, result.table)
    page.heading("Dice per class", 3)
    page.figure(f"{slug}_class_dice.png", f"{run.name}: Dice per class over all out-of-fold rows",
                figures.class_dice, result.class_dice)
    page.heading("Worst and best case-days", 3)
    for label, case_day in extremes(result.table):
        score = float(result.table.loc[result.table["case_day"] == case_day, "score"].iloc[0])
        title = f"{run.name}, {label}: {case_day} (score {score:.4f})"
        page.figure(f"{slug}_{label.replace(' ', '')}_{case_day}.png",
                    f"{title}; truth solid, prediction dashed, per class colour",
                    figures.overlays, title, overlay_panels(run, cache, case_day))
    return result


def _presence_section(page: Page, run: Run, cache: VolumeCache, slug: str) -> pd.DataFrame | None:
    oof = presence_oof(run, cache)
    if oof is None:
        page.text("No out-of-fold predictions (oof/*.npy) in this run.")
        return None
    threshold = run.folds[0].threshold
    table = presence.report_table(*oof, threshold)
    page.heading("Presence precision-recall (out of fold)", 3)
    page.text(f"Per class; precision, recall, F1 and true-negative rate at the run's threshold {threshold:g}.")
    page.table(table)
    page.figure(f"{slug}_precision_recall.png", f"{run.name}: precision-recall per class of slice presence",
                presence.pr_curve_figure, *oof, threshold)
    return table


def _run_section(page: Page, index: int, run: Run, cache: VolumeCache) -> RunReport:
    slug = _slug(index, run.name)
    page.heading(f"Run {run.name}")
    page.text(f"{run.path} - stage {run.stage or '?'}, arch {run.arch or '?'}, folds "
              f"{', '.join(f.name for f in run.folds)}, cache {cache.root}")
    logs = {f.name: f.log for f in run.folds if not f.log.empty}
    if logs:
        page.heading("Training curves", 3)
        page.figure(f"{slug}_curves.png", f"{run.name}: training loss and validation metrics per epoch, one line per fold",
                    figures.training_curves, logs)
    if run.stage == CLS_STAGE:
        return RunReport(run, presence=_presence_section(page, run, cache, slug))
    return RunReport(run, segmentation=_segmentation_section(page, run, cache, slug))


def _ensemble_section(page: Page, path: Path, record: dict) -> None:
    page.heading(f"Ensemble {path}")
    metrics, other = ensemble_tables(record)
    if metrics.empty and other.empty:
        page.text(f"No scores table in this file (keys: {', '.join(map(str, record)) or 'none'}).")
    if not metrics.empty:
        page.table(metrics)
    if not other.empty:
        page.table(other)
    contribution = contribution_table(record)
    if not contribution.empty:
        page.heading("Held-out contribution", 3)
        page.text("The held-out score with each component removed in turn from every fold's parameters (the "
                  "exact metric), and the tuned held-out score minus it: what the component wins.")
        page.table(contribution)
    if isinstance(record.get("params"), dict):
        page.heading("Parameters", 3)
        page.table(pd.DataFrame([(k, json.dumps(v)) for k, v in record["params"].items()], columns=["parameter", "value"]))


@dataclass
class Report:
    index: Path
    figures: list[str]
    runs: list[RunReport]


def build_report(opts: ReportOptions) -> Report:
    """Write `opts.out`/index.html and its PNG figures (atomically); return what was computed."""
    out, ensemble, cache_dir, data_dir = opts.out, opts.ensemble, opts.cache_dir, opts.data_dir
    loaded = [load_run(r, opts.allow_incomplete) for r in opts.runs]
    record = load_ensemble(ensemble).record if ensemble is not None else None
    title = opts.title or f"Run report: {', '.join(r.name for r in loaded)}"
    with atomic_dir(out) as folder:
        page = Page(folder)
        page.heading("Summary")
        page.text("Best validation score per fold (from its done marker, else the best val_score of its log) and their mean.")
        page.table(summary_table(loaded))
        reports = [_run_section(page, i, run, resolve_cache(run, cache_dir, data_dir)) for i, run in enumerate(loaded, 1)]
        if record is not None:
            _ensemble_section(page, Path(ensemble), record)
        (folder / "index.html").write_text(page.render(title), encoding="utf-8")
    return Report(out / "index.html", page.figures, reports)

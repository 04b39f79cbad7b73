"""The sections of the report page: each draws its figures and returns what its part of the
template shows (templates/report.html.j2 holds the headings and the prose)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from src.data.image_cache import ImageCache
from src.data.layout import CLASSES
from src.data.volumes import VolumeCache
from src.inference.runs import TrainedRun
from src.reporting import ensemble, figures, presence
from src.reporting.oof import image_panel, overlay_panels, presence_oof
from src.reporting.page import FigureFile, FigureWriter
from src.reporting.runs import fold_log, threshold
from src.reporting.scoring import (
    ImageSegmentationResult,
    SegmentationResult,
    evaluate_images,
    evaluate_segmentation,
    extremes,
)

CLS_STAGE = "cls"


@dataclass
class SegmentationSection:
    result: SegmentationResult
    case_days: FigureFile
    class_dice: FigureFile
    extremes: list[FigureFile]  # worst first, then best


@dataclass
class PresenceSection:
    table: pd.DataFrame  # src.reporting.presence.report_table
    threshold: float
    pr_curve: FigureFile


@dataclass
class ImageSection:
    """A segmentation run on 2D images: its dataset, the OOF summary overall and per stratum, the Dice per
    class (more than one class only) and the worst and best images."""

    result: ImageSegmentationResult
    dataset: str
    labels: tuple[str, ...]
    channels: tuple[str, ...]
    table: pd.DataFrame  # result.summary, its stratum column named by the description's stratify key
    class_dice: FigureFile | None
    extremes: FigureFile


@dataclass
class RunSection:
    """One run: its training curves and, given OOF predictions, its segmentation (GI or 2D images) or
    presence part."""

    run: TrainedRun
    cache: Path
    curves: FigureFile | None
    segmentation: SegmentationSection | None = None
    presence: PresenceSection | None = None
    images: ImageSection | None = None


@dataclass
class EnsembleSection:
    path: Path
    record_keys: list[str]
    scores: list[pd.DataFrame]  # the non-empty ones of ensemble_tables
    contribution: pd.DataFrame | None
    choice: tuple[pd.DataFrame, str] | None  # the candidates' table and what its intervals are
    params: pd.DataFrame | None
    oof: str | None = None  # a 2D file's sentence on its OOF data


def _slug(index: int, name: str) -> str:
    return f"{index:02d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}"


def _segmentation(out: FigureWriter, run: TrainedRun, cache: VolumeCache, slug: str) -> SegmentationSection | None:
    result = evaluate_segmentation(run, cache)
    if result is None:
        return None
    case_days = out.draw(f"{slug}_case_days.png",
                         f"{run.name}: score per case-day, Dice and Hausdorff parts, worst first",
                         figures.case_day_scores, result.table)
    class_dice = out.draw(f"{slug}_class_dice.png", f"{run.name}: Dice per class over all out-of-fold rows",
                          figures.class_dice, result.class_dice)
    shown = []
    for label, case_day in extremes(result.table):
        score = float(result.table.loc[result.table["case_day"] == case_day, "score"].iloc[0])
        title = f"{run.name}, {label}: {case_day} (score {score:.4f})"
        shown.append(out.draw(f"{slug}_{label.replace(' ', '')}_{case_day}.png",
                              f"{title}; truth solid, prediction dashed, per class colour",
                              figures.overlays, title, CLASSES, overlay_panels(run, cache, case_day)))
    return SegmentationSection(result, case_days, class_dice, shown)


def _images(out: FigureWriter, run: TrainedRun, cache: ImageCache, slug: str) -> ImageSection | None:
    result = evaluate_images(run, cache)
    if result is None:
        return None
    description = cache.description
    class_dice = None
    if description.n_classes > 1:
        class_dice = out.draw(f"{slug}_class_dice.png", f"{run.name}: Dice per class, mean over the out-of-fold images",
                              figures.class_dice, result.class_dice)
    panels = []
    for label, key in extremes(result.table, "key"):
        row = result.table.loc[result.table["key"] == key].iloc[0]
        panels.append(image_panel(run, cache, key, f"{label}: {row['id']} (Dice {row['dice']:.4f})"))
    title = f"{run.name}: worst and best out-of-fold images by Dice"
    shown = out.draw(f"{slug}_worst_best.png", f"{title}; truth solid, prediction dashed, per class colour",
                     figures.overlays, title, description.labels, panels)
    table = result.summary.rename(columns={"stratum": description.stratify_key or "stratum"})
    return ImageSection(result, description.name, description.labels, description.channels, table, class_dice, shown)


def _presence(out: FigureWriter, run: TrainedRun, cache: VolumeCache | ImageCache, slug: str) -> PresenceSection | None:
    oof = presence_oof(run, cache)
    if oof is None:
        return None
    cut, classes = threshold(next(iter(run.folds.values()))), presence.class_names(cache)
    table = presence.report_table(*oof, cut, classes, presence.unit_of(cache))
    curve = out.draw(f"{slug}_precision_recall.png", f"{run.name}: precision-recall per class of presence",
                     presence.pr_curve_figure, *oof, cut, classes)
    return PresenceSection(table, cut, curve)


def run_section(out: FigureWriter, index: int, run: TrainedRun, cache: VolumeCache | ImageCache) -> RunSection:
    """The index-th run (from 1; it prefixes the figure names), on its GI or 2D cache."""
    slug = _slug(index, run.name)
    logs = {f.fold: log for f in run.folds.values() if not (log := fold_log(f)).empty}
    curves = None
    if logs:
        curves = out.draw(f"{slug}_curves.png",
                          f"{run.name}: training loss and validation metrics per epoch, one line per fold",
                          figures.training_curves, logs)
    section = RunSection(run, cache.root, curves)
    if run.stage.name == CLS_STAGE:
        section.presence = _presence(out, run, cache, slug)
    elif isinstance(cache, ImageCache):
        section.images = _images(out, run, cache, slug)
    else:
        section.segmentation = _segmentation(out, run, cache, slug)
    return section


def ensemble_section(path: Path, record: dict, images: bool = False) -> EnsembleSection:
    """The ensemble file's part of the page; `images`: a 2D file (score/dice/jaccard, counted in images)."""
    contribution = ensemble.contribution_table(record)
    metric_keys = ensemble.IMAGE_METRIC_KEYS if images else ensemble.METRIC_KEYS
    return EnsembleSection(path, [str(k) for k in record],
                           [t for t in ensemble.ensemble_tables(record, metric_keys) if not t.empty],
                           None if contribution.empty else contribution, ensemble.choice_table(record),
                           ensemble.params_table(record), ensemble.oof_note(record) if images else None)

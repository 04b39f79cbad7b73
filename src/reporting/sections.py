"""The sections of the report page: each draws its figures and returns what its part of the
template shows (templates/report.html.j2 holds the headings and the prose)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from src.data.volumes import VolumeCache
from src.inference.runs import TrainedRun
from src.reporting import ensemble, figures, presence
from src.reporting.oof import overlay_panels, presence_oof
from src.reporting.page import FigureFile, FigureWriter
from src.reporting.runs import fold_log, threshold
from src.reporting.scoring import SegmentationResult, evaluate_segmentation, extremes

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
class RunSection:
    """One run: its training curves and, given OOF predictions, its segmentation or presence part."""

    run: TrainedRun
    cache: Path
    curves: FigureFile | None
    segmentation: SegmentationSection | None = None
    presence: PresenceSection | None = None


@dataclass
class EnsembleSection:
    path: Path
    record_keys: list[str]
    scores: list[pd.DataFrame]  # the non-empty ones of ensemble_tables
    contribution: pd.DataFrame | None
    choice: tuple[pd.DataFrame, str] | None  # the candidates' table and what its intervals are
    params: pd.DataFrame | None


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
                              figures.overlays, title, overlay_panels(run, cache, case_day)))
    return SegmentationSection(result, case_days, class_dice, shown)


def _presence(out: FigureWriter, run: TrainedRun, cache: VolumeCache, slug: str) -> PresenceSection | None:
    oof = presence_oof(run, cache)
    if oof is None:
        return None
    cut = threshold(next(iter(run.folds.values())))
    table = presence.report_table(*oof, cut)
    curve = out.draw(f"{slug}_precision_recall.png", f"{run.name}: precision-recall per class of slice presence",
                     presence.pr_curve_figure, *oof, cut)
    return PresenceSection(table, cut, curve)


def run_section(out: FigureWriter, index: int, run: TrainedRun, cache: VolumeCache) -> RunSection:
    """The index-th run (from 1; it prefixes the figure names)."""
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
    else:
        section.segmentation = _segmentation(out, run, cache, slug)
    return section


def ensemble_section(path: Path, record: dict) -> EnsembleSection:
    contribution = ensemble.contribution_table(record)
    return EnsembleSection(path, [str(k) for k in record], [t for t in ensemble.ensemble_tables(record) if not t.empty],
                           None if contribution.empty else contribution, ensemble.choice_table(record),
                           ensemble.params_table(record))

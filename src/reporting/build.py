"""An HTML report of training runs: curves, out-of-fold scores, overlays, PR curves, ensemble scores.

`python -m src.report --runs runs/A [runs/B ...] [--ensemble ensemble.json] --out reports/NAME`

For each run folder (runs/<name>/fold*/): the training curves of log.csv; for a segmentation run the
score per case-day (oof_scores.csv, or the OOF probabilities thresholded at the run's threshold and
scored with src.metrics.competition), the Dice per class, and truth/prediction contours on the slices
with the most labelled area of the two worst and two best case-days; for a classifier run (stage
"cls", OOF (Z, 3) presence probabilities) src.reporting.presence's table and precision-recall curve
per class. With --ensemble, the scores of ensemble.json. The page (templates/report.html.j2) is
plain self-contained HTML with PNG figures beside it; the --out folder is built in a temporary
sibling and swapped in only when complete.

The jobs, one module each: runs (loading), oof (reading OOF predictions), scoring, ensemble (its
tables), sections (figures and data of each part of the page), page (the template).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from src.core.artifacts import REPORT_MARKER, REPORT_PAGE
from src.core.atomic import atomic_dir, write_json_atomic
from src.core.outputs import check_output
from src.data.volumes import VolumeCache
from src.ensembling.ensemble_file import load_ensemble
from src.inference.runs import TrainedRun
from src.reporting.options import ReportOptions
from src.reporting.page import FigureWriter, render_page
from src.reporting.scoring import summary_table
from src.reporting.sections import RunSection, ensemble_section, run_section


@dataclass
class Report:
    index: Path
    figures: list[str]
    runs: list[RunSection]


def build_report(opts: ReportOptions) -> Report:
    """Write `out`/index.html, its PNG figures and the report marker (atomically, replacing only an
    earlier report); return what was computed."""
    runs, out, ensemble, cache_dir, data_dir = opts.runs, Path(opts.out), opts.ensemble, opts.cache_dir, opts.data_dir
    check_output(out, "--out", (*runs, ensemble, cache_dir), data_dir, (REPORT_PAGE, REPORT_MARKER), "report")
    loaded = [TrainedRun.load(r, opts.allow_incomplete, require_weights=False) for r in runs]
    record = load_ensemble(ensemble).record if ensemble is not None else None
    title = opts.title or f"Run report: {', '.join(r.name for r in loaded)}"
    with atomic_dir(out) as folder:
        figures = FigureWriter(folder)
        sections = [run_section(figures, i, run, VolumeCache(run.cache_dir(data_dir, cache_dir)))
                    for i, run in enumerate(loaded, 1)]
        page = render_page(title=title, summary=summary_table(loaded), runs=sections,
                           ensemble=ensemble_section(Path(ensemble), record) if record is not None else None)
        (folder / REPORT_PAGE).write_text(page, encoding="utf-8")
        write_json_atomic(folder / REPORT_MARKER, {"title": title, "runs": [str(r) for r in runs],
                                                 "ensemble": str(ensemble) if ensemble is not None else None})
    return Report(out / REPORT_PAGE, figures.names, sections)

"""An HTML report of training runs: curves, out-of-fold scores, overlays, PR curves, ensemble scores.

`python -m src.report --runs runs/A [runs/B ...] [--ensemble ensemble.json] --out reports/NAME`

For each run folder (runs/<name>/fold*/): the training curves of log.csv; for a segmentation run the
score per case-day (oof_scores.csv, or the OOF probabilities thresholded at the run's threshold and
scored with src.metrics.competition), the Dice per class, and truth/prediction contours on the slices
with the most labelled area of the two worst and two best case-days; for a classifier run (stage
"cls", OOF (Z, 3) presence probabilities) src.reporting.presence's table and precision-recall curve
per class. A run trained on 2D images (its cache an ImageCache: Carvana, EBHI-Seg, nnU-Net 2D) shows
its training curves, the OOF Dice, Jaccard, precision and recall overall and per stratum (the EBHI
category; src.metrics.overlap at the fold's threshold), the Dice per class when the dataset has more
than one, and the two worst and two best images by Dice with their contours; one report holds runs of
one kind of data. With --ensemble, the scores of ensemble.json (GI or 2D). The page (templates/report.html.j2) is
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
from src.core.errors import DataError
from src.core.outputs import check_output
from src.data.image_cache import ImageCache, is_image_cache
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


def open_caches(runs: list[TrainedRun], data_dir: Path | None, cache_dir: Path | None) -> list[VolumeCache | ImageCache]:
    """Each run's cache (--cache-dir, else that of --data-dir, else its own): 2D images or GI volumes, the
    same kind for every run (else a one-line error naming two runs that differ)."""
    caches = []
    for run in runs:
        folder = run.cache_dir(data_dir, cache_dir)
        caches.append(ImageCache(folder) if is_image_cache(folder) else VolumeCache(folder))
    kinds = {isinstance(c, ImageCache): (run, c) for run, c in zip(runs, caches)}
    if len(kinds) > 1:
        (images, image_cache), (gi, gi_cache) = kinds[True], kinds[False]
        raise DataError(f"--runs: {images.path} was trained on 2D images ({image_cache.root}) and {gi.path} on GI "
                        f"case-days ({gi_cache.root}); report each kind of data on its own")
    return caches


def read_ensemble_record(path: Path, images: bool) -> dict:
    """The ensemble file's record (checked by load_ensemble), for runs of 2D images (`images`) or GI
    case-days; a file of the other kind is a one-line error."""
    ensemble = load_ensemble(path)
    if (ensemble.dims == "2d") != images:
        raise DataError(f"--ensemble {path}: an ensemble of {'2D images' if ensemble.dims == '2d' else 'GI case-days'}, "
                        f"the runs are of {'2D images' if images else 'GI case-days'}")
    return ensemble.record


def build_report(opts: ReportOptions) -> Report:
    """Write `out`/index.html, its PNG figures and the report marker (atomically, replacing only an
    earlier report); return what was computed."""
    runs, out, ensemble, cache_dir, data_dir = opts.runs, Path(opts.out), opts.ensemble, opts.cache_dir, opts.data_dir
    check_output(out, "--out", (*runs, ensemble, cache_dir), data_dir, (REPORT_PAGE, REPORT_MARKER), "report")
    loaded = [TrainedRun.load(r, opts.allow_incomplete, require_weights=False) for r in runs]
    caches = open_caches(loaded, data_dir, cache_dir)
    images = isinstance(caches[0], ImageCache)
    record = read_ensemble_record(Path(ensemble), images) if ensemble is not None else None
    title = opts.title or f"Run report: {', '.join(r.name for r in loaded)}"
    with atomic_dir(out) as folder:
        figures = FigureWriter(folder)
        sections = [run_section(figures, i, run, cache) for i, (run, cache) in enumerate(zip(loaded, caches), 1)]
        page = render_page(title=title, summary=summary_table(loaded), runs=sections, images=images,
                           ensemble=ensemble_section(Path(ensemble), record, images) if record is not None else None)
        (folder / REPORT_PAGE).write_text(page, encoding="utf-8")
        write_json_atomic(folder / REPORT_MARKER, {"title": title, "runs": [str(r) for r in runs],
                                                 "ensemble": str(ensemble) if ensemble is not None else None})
    return Report(out / REPORT_PAGE, figures.names, sections)

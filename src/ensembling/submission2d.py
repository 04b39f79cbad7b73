"""The submission on 2D data (Carvana, EBHI-Seg, nnU-Net 2D):

`python -m src.submit --ensemble E.json --data-dir DIR --out OUT [--images FOLDER]`
`python -m src.submit --runs runs/A [runs/B ...] --data-dir DIR --out OUT [--images FOLDER] [--threshold P] [--tta hflip]`

Every test image of the data folder (its format's test split), or with --images every image of FOLDER
read in the dataset's layout and channels, is predicted where it lies (src.inference.images: each run's
fold models and TTA flips) and turned into an index map: with --ensemble (a file of
src.ensembling.tune2d) by each member with its recorded folds and TTA, then the ensemble's blend,
thresholds, component sizes and hole filling (src.ensembling.postprocess2d.index_map, the tuner's own
path); with --runs by the runs' plain mean thresholded as validation does (label_map: the most probable
class above the threshold, else background). Each is written at once, image by image:

- Carvana's test split: the `img,rle_mask` CSV OUT, validated against sample_submission.csv;
- otherwise (EBHI, nnU-Net, and --images on any dataset): label images `OUT/<id><ending>` named like the
  inputs, in the dataset's label encoding and ending (.png for Carvana's .jpg), submission.json last.

OUT is checked before any work; both forms are written atomically, so an error leaves OUT as it was. Every
image is decoded by the format `submit` detected with --max-image-pixels (src.metrics.scoring2d.image_dataset):
one over the cap is a one-line error naming it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from src.core.artifacts import SUBMISSION_MARKER
from src.core.atomic import atomic_dir, check_writable, write_json_atomic
from src.core.errors import DataError
from src.core.outputs import check_output
from src.data.description import DatasetDescription
from src.data.formats.base import ImageFormat, Sample
from src.data.formats.submission import label_ending, write_carvana_csv, write_label_image
from src.data.image_samples import label_map
from src.ensembling.ensemble_file import Ensemble, load_ensemble
from src.ensembling.postprocess2d import index_map
from src.inference.images import predict_images, run_threshold
from src.inference.predict import RunPredictor
from src.inference.runs import TrainedRun, check_image_run
from src.inference.tta import merge

if TYPE_CHECKING:
    from src.ensembling.submission import SubmitOptions

SAMPLE_CSV = "sample_submission.csv"


def _samples(opts: SubmitOptions, fmt: ImageFormat) -> list[Sample]:
    """The images to predict: those of --images, else the data folder's test split; never none."""
    if opts.images is not None and not Path(opts.images).is_dir():
        raise DataError(f"--images {opts.images}: not a folder")
    listed = (fmt.folder_samples(opts.data_dir, opts.images) if opts.images is not None
              else fmt.samples(opts.data_dir, "test")).samples
    if not listed:
        raise DataError(f"{opts.images or opts.data_dir}: no test images to predict"
                        + ("" if opts.images else " (give a folder of images with --images)"))
    return listed


ToMap = Callable[[list[np.ndarray]], np.ndarray]  # the runs' (K, H, W) probabilities -> (H, W) index map


def submit_images(opts: SubmitOptions, fmt: ImageFormat, description: DatasetDescription,
                  device: torch.device) -> Path:
    """Predict the 2D test images with the 2D ensemble or the runs' mean and write the submission
    `opts.out`; returns it."""
    data_dir, out = Path(opts.data_dir), Path(opts.out)
    csv = opts.images is None and description.submission == "carvana_csv"
    ensemble = load_ensemble(opts.ensemble) if opts.ensemble is not None else None
    inputs = (*opts.runs, *(ensemble.run_paths() if ensemble else ()), opts.ensemble, opts.images)
    check_output(out, "--out", inputs, data_dir, () if csv else (SUBMISSION_MARKER,), "submission")
    if opts.images is not None:
        check_output(out, "--out", (), opts.images)
    if csv:
        check_writable(out)
    elif out.suffix.lower() == ".csv":
        raise DataError(f"--out {out}: {description.name} is submitted as label images, give a folder")
    samples = _samples(opts, fmt)
    if ensemble is not None:
        predictors, to_map, record, what = _ensemble(opts, ensemble, description, device)
    else:
        predictors, to_map, record, what = _plain_mean(opts, description, device)
    masks = ((s, to_map(probs)) for s, probs in predict_images(predictors, fmt, description, samples))
    if csv:
        count = write_carvana_csv(out, ((s.images[0].name, m) for s, m in masks), data_dir / SAMPLE_CSV)
    else:
        count = _write_label_images(out, masks, fmt, description, {**record, "images": str(opts.images or data_dir)})
    print(f"submit: {count} images, {what} -> {out}")
    return out


def _plain_mean(opts: SubmitOptions, description: DatasetDescription,
                device: torch.device) -> tuple[list[RunPredictor], ToMap, dict, str]:
    """--runs: their predictors, label_map of their mean, the record and the line that say so."""
    runs = [check_image_run(TrainedRun.load(r, opts.allow_incomplete), description, opts.data_dir) for r in opts.runs]
    predictors = [RunPredictor(r, None, "test", opts.tta, device, opts.batch_size, r.cache_dir()) for r in runs]
    threshold = run_threshold(predictors, opts.threshold)
    record = {"runs": [str(r) for r in opts.runs], "threshold": threshold, "tta": list(opts.tta)}
    what = f"{len(runs)} run(s), threshold {threshold}{', tta ' + ','.join(opts.tta) if opts.tta else ''}"
    return predictors, lambda probs: label_map(merge(probs), threshold), record, what


def _ensemble(opts: SubmitOptions, ensemble: Ensemble, description: DatasetDescription,
              device: torch.device) -> tuple[list[RunPredictor], ToMap, dict, str]:
    """--ensemble: each member's predictor (its folds and TTA), index_map with the file's parameters, the
    record and the line that say so."""
    where = f"--ensemble {opts.ensemble}"
    if ensemble.dims != "2d":
        raise DataError(f"{where}: an ensemble of the GI slices, {opts.data_dir} holds 2D images")
    if ensemble.params.n_classes != description.n_classes:
        raise DataError(f"{where}: parameters for {ensemble.params.n_classes} class(es), {opts.data_dir} has "
                        f"{description.n_classes} ({', '.join(description.labels)})")
    members, gate = ensemble.members, ensemble.gate
    runs = [check_image_run(TrainedRun.load(m.path, opts.allow_incomplete), description, opts.data_dir,
                            f"{where}: run") for m in members]
    predictors = [RunPredictor(r, m.folds, "test", m.predict.tta, device, None, r.cache_dir())
                  for r, m in zip(runs, members)]
    if gate is not None:  # predicted last: its (K,) presence ends the list to_map gets
        run = check_image_run(TrainedRun.load(gate.path, opts.allow_incomplete), description, opts.data_dir,
                              f"{where}: gate", output="presence")
        predictors.append(RunPredictor(run, gate.folds, "test", gate.tta, device, None, run.cache_dir()))
    names = [m.name for m in members]
    record = {"ensemble": str(opts.ensemble), "runs": [m.path for m in members], "gate": gate.path if gate else None}

    def to_map(probs: list[np.ndarray]) -> np.ndarray:
        presence = probs.pop() if gate is not None else None
        return index_map(dict(zip(names, probs)), ensemble.params, presence=presence)

    return (predictors, to_map, record,
            f"the 2D ensemble {opts.ensemble} of {len(members)} run(s){' with its gate' if gate else ''}")


def _write_label_images(out: Path, masks, fmt: ImageFormat, description: DatasetDescription, record: dict) -> int:
    """Write each (sample, index map) as `out/<id><ending>` into a folder that replaces `out` when complete,
    the marker last; returns the count."""
    ending, count = label_ending(description), 0
    with atomic_dir(out) as folder:
        for sample, index_map in masks:
            write_label_image(folder, sample.id, index_map, ending, fmt.label_scale)
            count += 1
        write_json_atomic(folder / SUBMISSION_MARKER, {**record, "count": count, "ending": ending})
    return count

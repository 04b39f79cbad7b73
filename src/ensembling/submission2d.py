"""The submission on 2D data (Carvana, EBHI-Seg, nnU-Net 2D):

`python -m src.submit --runs runs/A [runs/B ...] --data-dir DIR --out OUT [--images FOLDER] [--threshold P] [--tta hflip]`

Every test image of the data folder (its format's test split), or with --images every image of FOLDER
read in the dataset's layout and channels, is predicted where it lies (src.inference.images: each run's
fold models and TTA flips, the runs' plain mean), thresholded as validation does (label_map: the most
probable class above the threshold, else background) and written at once, image by image:

- Carvana's test split: the `img,rle_mask` CSV OUT, validated against sample_submission.csv;
- otherwise (EBHI, nnU-Net, and --images on any dataset): label images `OUT/<id><ending>` named like the
  inputs, in the dataset's label encoding and ending (.png for Carvana's .jpg), submission.json last.

OUT is checked before any work; both forms are written atomically, so an error leaves OUT as it was.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from src.core.artifacts import SUBMISSION_MARKER
from src.core.atomic import atomic_dir, check_writable, write_json_atomic
from src.core.errors import DataError
from src.core.outputs import check_output
from src.data.description import DatasetDescription
from src.data.formats.base import ImageFormat, Sample
from src.data.formats.submission import label_ending, write_carvana_csv, write_label_image
from src.data.image_samples import label_map
from src.inference.images import check_image_run, predict_images, run_threshold
from src.inference.predict import RunPredictor
from src.inference.runs import TrainedRun

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


def submit_images(opts: SubmitOptions, fmt: ImageFormat, description: DatasetDescription,
                  device: torch.device) -> Path:
    """Predict the 2D test images with the runs' mean and write the submission `opts.out`; returns it."""
    data_dir, out = Path(opts.data_dir), Path(opts.out)
    csv = opts.images is None and description.submission == "carvana_csv"
    check_output(out, "--out", (*opts.runs, opts.images), data_dir, () if csv else (SUBMISSION_MARKER,), "submission")
    if opts.images is not None:
        check_output(out, "--out", (), opts.images)
    if csv:
        check_writable(out)
    elif out.suffix.lower() == ".csv":
        raise DataError(f"--out {out}: {description.name} is submitted as label images, give a folder")
    samples = _samples(opts, fmt)
    runs = [check_image_run(TrainedRun.load(r, opts.allow_incomplete), description, data_dir) for r in opts.runs]
    predictors = [RunPredictor(r, None, "test", opts.tta, device, opts.batch_size, r.cache_dir()) for r in runs]
    threshold = run_threshold(predictors, opts.threshold)
    masks = ((s, label_map(probs, threshold)) for s, probs in predict_images(predictors, fmt, description, samples))
    if csv:
        count = write_carvana_csv(out, ((s.images[0].name, m) for s, m in masks), data_dir / SAMPLE_CSV)
    else:
        count = _write_label_images(out, masks, fmt, description, {
            "runs": [str(r) for r in opts.runs], "threshold": threshold, "tta": list(opts.tta),
            "images": str(opts.images or data_dir)})
    print(f"submit: {count} images, {len(runs)} run(s), threshold {threshold}"
          f"{', tta ' + ','.join(opts.tta) if opts.tta else ''} -> {out}")
    return out


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

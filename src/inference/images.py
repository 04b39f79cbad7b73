"""Prediction of 2D images read where they lie (a test split is never cached: Carvana's 100,064 test images
would take 740 GB decoded): each image is decoded by its dataset's format, predicted by every run
(RunPredictor: the mean of its fold models, with its TTA flips), and the runs' (K, H, W) probabilities
are handed on (to be averaged, or blended by a 2D ensemble), one image in memory at a time."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from src.core.errors import DataError
from src.data.description import DatasetDescription
from src.data.formats.base import ImageFormat, Sample
from src.data.image_samples import ImageInput
from src.inference.predict import RunPredictor


def run_threshold(predictors: list[RunPredictor], given: float | None) -> float:
    """`given`, else the validation threshold of the runs' configs, which must then agree."""
    if given is not None:
        return given
    found = sorted({f.task.cfg.threshold for p in predictors for f in p.folds})
    if len(found) > 1:
        raise DataError(f"--threshold: the runs were validated at thresholds {found}; choose one")
    return found[0]


def predict_images(predictors: list[RunPredictor], fmt: ImageFormat, description: DatasetDescription,
                   samples: list[Sample]) -> Iterator[tuple[Sample, list[np.ndarray]]]:
    """Each sample with every run's (K, H, W) float32 probabilities at its full size, in the runs' order
    (src.inference.tta.merge makes their plain mean)."""
    for sample in samples:
        image = ImageInput.of(sample.id, fmt.read_image(sample, description))
        yield sample, [p.predict(image) for p in predictors]

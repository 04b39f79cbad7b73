"""Flip test-time augmentation: predict the mirrored volume (or 2D image), mirror the output back, average."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from src.core.artifacts import Prediction
from src.core.errors import DataError

if TYPE_CHECKING:  # torch stays out of the tuner, which reads TTA names only (src.inference.settings)
    from src.inference.fold_model import ModelInput

FLIPS = {"hflip": -1, "vflip": -2}  # in-plane axis flipped: W, H


def parse_tta(tta: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    names = tuple(t.strip() for t in (tta.split(",") if isinstance(tta, str) else tta or ()) if t.strip())
    unknown = [t for t in names if t not in FLIPS]
    if unknown or len(set(names)) != len(names):
        raise DataError(f"--tta {','.join(names)}: expected distinct names from {', '.join(FLIPS)}")
    return names


def flip_volume(vol: ModelInput, axis: int) -> ModelInput:
    """The case-day's (or 2D image's) pixels mirrored along an in-plane axis (-1: W, -2: H); the mask is left out."""
    return dataclasses.replace(vol, image=np.ascontiguousarray(np.flip(vol.image, axis)), mask=None)


def flip_box(box, axis: int, height: int, width: int) -> list[int]:
    y0, y1, x0, x1 = (int(v) for v in box)
    return [y0, y1, width - x1, width - x0] if axis == -1 else [height - y1, height - y0, x0, x1]


def unflip(output: Prediction, axis: int, height: int, width: int) -> Prediction:
    """Map a prediction on a flipped volume back: images are flipped, (Z, 3) presence is kept."""
    if isinstance(output, dict):
        return {**output, "box": flip_box(output["box"], axis, height, width)} if "box" in output else output
    return np.flip(output, axis) if output.ndim >= 3 else output


def merge(outputs: list[Prediction]) -> Prediction:
    """Mean of probability arrays (float32); union of detector boxes."""
    if isinstance(outputs[0], dict):
        boxes = np.array([o["box"] for o in outputs])
        return {"box": [int(boxes[:, 0].min()), int(boxes[:, 1].max()), int(boxes[:, 2].min()), int(boxes[:, 3].max())]}
    total = np.array(outputs[0], dtype=np.float32)
    for o in outputs[1:]:
        total += o
    return total / len(outputs)


def predict_tta(fold, vol: ModelInput, tta: tuple[str, ...] = (), box=None, batch_size: int | None = None,
                batched: bool = False) -> Prediction:
    """The plain prediction of a FoldModel averaged with one per flip in `tta`. `batched`: the volume
    and its flips go through the model together (FoldModel.predict_many: one forward pass per slice
    batch for the 2.5D segmenter), else one volume after the other."""
    _, height, width = vol.shape
    if batched and tta:
        axes = [FLIPS[name] for name in tta]
        vols = [vol, *(flip_volume(vol, axis) for axis in axes)]
        boxes = [box, *(None if box is None else flip_box(box, axis, height, width) for axis in axes)]
        outputs = fold.predict_many(vols, boxes, batch_size)
        return merge([outputs[0], *(unflip(o, axis, height, width) for o, axis in zip(outputs[1:], axes))])
    outputs = [fold.predict(vol, box, batch_size)]
    for name in tta:
        axis = FLIPS[name]
        flipped_box = None if box is None else flip_box(box, axis, height, width)
        outputs.append(unflip(fold.predict(flip_volume(vol, axis), flipped_box, batch_size), axis, height, width))
    return merge(outputs) if len(outputs) > 1 else outputs[0]

"""Bring a slice (or a crop of it) to the model's square input and predictions back to (H, W).

`resize` stretches to size x size; `letterbox` keeps the aspect ratio and pads (the 1st place's
"resize keep ratio + pad"). An optional crop box (y0, y1, x0, x1), e.g. from the detector, is cut
first and the prediction is pasted back into a zero canvas of the original size.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

MODES = ("resize", "letterbox")
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Geometry:
    size: int
    mode: str = "resize"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown geometry mode {self.mode!r}; valid: {', '.join(MODES)}")

    def placement(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(top, left, new_h, new_w) of an h x w region inside the size x size input."""
        if self.mode == "resize":
            return 0, 0, self.size, self.size
        scale = self.size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        return (self.size - nh) // 2, (self.size - nw) // 2, nh, nw

    def to_model(self, array: np.ndarray, box: Box | None = None, nearest: bool = False) -> np.ndarray:
        """(H, W) or channel-first (C, H, W) -> (size, size) or (C, size, size); `nearest` for masks."""
        if array.ndim == 2:
            return self.to_model(array[None], box, nearest)[0]
        if box is not None:
            array = array[:, box[0]:box[1], box[2]:box[3]]
        h, w = array.shape[1:]
        top, left, nh, nw = self.placement(h, w)
        interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        out = np.zeros((array.shape[0], self.size, self.size), dtype=array.dtype)
        for c, plane in enumerate(array):  # plane by plane: no channel-last copies, any channel count
            out[c, top:top + nh, left:left + nw] = cv2.resize(np.ascontiguousarray(plane), (nw, nh), interpolation=interp)
        return out

    def from_model(self, probs: torch.Tensor, height: int, width: int, box: Box | None = None) -> torch.Tensor:
        """(N, C, size, size) probabilities -> (N, C, height, width), bilinear; zero outside the box."""
        y0, y1, x0, x1 = box if box is not None else (0, height, 0, width)
        top, left, nh, nw = self.placement(y1 - y0, x1 - x0)
        region = probs[:, :, top:top + nh, left:left + nw]
        region = F.interpolate(region.float(), size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
        if box is None:
            return region
        out = probs.new_zeros((probs.shape[0], probs.shape[1], height, width), dtype=region.dtype)
        out[:, :, y0:y1, x0:x1] = region
        return out

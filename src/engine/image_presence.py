"""The presence classifier on 2D images: the cls stage on a cache of 2D images (`src.engine.cls.cls_task`
builds it there), the image version of the GI's empty-slice classifier.

Same inputs as the 2D segmenter (src.engine.image2d: the data's channels, its geometry and augmentation);
one logit per label, trained with the config's loss (BCE by default) on whether the label has a pixel in
the image as the model sees it (resized and augmented). Validation predicts every image of the fold and
saves its (K,) presence probabilities as float16 oof/<key>.npy, which the 2D ensemble's gate reads
(`python -m src.ensemble tune --gate RUN`). Checkpoints are chosen as the slice classifier's are: the mean
over labels of the average precision (a label present in no validation image enters with its
true-negative rate at --threshold).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from src.data.geometry import Box
from src.data.image_samples import ImageInput, model_input
from src.engine.image2d import ImageSegmentationTask
from src.engine.segmentation import to_device
from src.engine.trainer import Evaluation
from src.metrics.presence import image_presence, presence_score, presence_table
from src.models.registry import create_model


class ImagePresenceTask(ImageSegmentationTask):
    """The cls stage on 2D images: (K,) presence probabilities per image."""

    def build_model(self) -> nn.Module:
        return create_model(self.cfg.arch, in_channels=self.description.n_channels, classes=self.description.n_classes)

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        presence = batch["mask"].flatten(2).amax(dim=2)  # (B, K): 1 where the one-vs-rest target has a pixel
        logits = model(to_device(self.cfg, batch["image"], device))
        return self.criterion(logits, presence.to(device, non_blocking=True))

    def predict_volume(self, model: nn.Module, image: ImageInput, device: torch.device, box: Box | None = None,
                       batch_size: int | None = None) -> np.ndarray:
        """(K,) float32 presence probabilities of one image (of its crop `box` if given)."""
        batch = torch.from_numpy(model_input(image.pixels, self.geometry, box))[None]
        return torch.sigmoid(model(to_device(self.cfg, batch, device)).float())[0].cpu().numpy()

    def evaluate(self, model: nn.Module, keys: list[str], device: torch.device,
                 save: Callable[[str, np.ndarray], object]) -> Evaluation:
        """Predict and save each image's presence; score the mean AP over labels (module doc)."""
        k, thr, table = self.description.n_classes, self.cfg.threshold, self.entries
        probs, truths, rows = [], [], []
        for key in keys:
            entry = ImageInput.of(key, *self.cache.load(key))
            p, t = self.predict_volume(model, entry, device).astype(np.float16), image_presence(entry.mask, k)
            save(key, p)  # scored as saved: float16 ties change the AP
            rows.append({"key": key, "id": table.at[key, "id"], "stratum": table.at[key, "stratum"],
                         "positives": int(t.sum()), "predicted": int((p >= thr).sum()),
                         "accuracy": float(((p >= thr) == t).mean())})
            probs.append(p)
            truths.append(t)
        scores = presence_table(np.stack(probs).astype(np.float32), np.stack(truths), thr, self.description.labels,
                                "images")
        score = presence_score(scores)
        metrics = {"val_score": score}
        for row in scores.to_dict("records"):
            metrics.update({f"val_{m}_{row['class']}": row[m] for m in ("ap", "precision", "recall")})
        return Evaluation(score, metrics, pd.DataFrame(rows))

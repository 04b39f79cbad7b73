"""Reader of EBHI-Seg (histopathology): `<root>/<category>/image/<name>.png` and its mask
`<root>/<category>/label/<name>.png`.

The categories are the folders' names (the real set has six, of very unequal counts) and stratify the
folds. The masks mark the lesion / gland regions 0/255 (0/1, and RGB saved masks of three equal channels,
are read too): one class, named "foreground". Images without a mask are skipped and reported; EBHI has
no test split, so `samples(root, "test")` is empty.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.core.errors import DataError
from src.data.description import DatasetDescription
from src.data.formats.base import Sample, SampleList, read_image_file
from src.data.formats.files import image_files, single_file_samples
from src.data.formats.pixels import read_channels, read_label_map
from src.data.layout import MAX_IMAGE_PIXELS

CHANNELS = {3: ("R", "G", "B"), 1: ("gray",)}  # by the first image's channel count
LABEL = "foreground"


def _categories(root: Path) -> list[Path]:
    """The category folders: those holding an image/ or a label/ folder."""
    return [d for d in sorted(root.iterdir()) if not d.name.startswith(".")
            and ((d / "image").is_dir() or (d / "label").is_dir())]


@dataclass(frozen=True)
class EbhiFormat:
    max_pixels: int = MAX_IMAGE_PIXELS  # the cap of every image and label read (src.data.formats.base)
    name = "ebhi"
    label_scale = 255  # masks are 0/255
    looked_for = "<category>/image/ and <category>/label/ folders"
    marker = ""  # no file stands for the dataset: the folder does
    submission = "label_images"

    def detect(self, root: Path) -> bool:
        return any((d / "image").is_dir() and (d / "label").is_dir() for d in _categories(Path(root)))

    def describe(self, root: Path) -> DatasetDescription:
        root = Path(root)
        samples = self.samples(root, "train").samples
        if not samples:
            raise DataError(f"{root}: no image with a label in <category>/image/ and <category>/label/")
        first = samples[0].images[0]
        array = read_image_file(first, self.max_pixels)
        n_channels = 1 if array.ndim == 2 else array.shape[2]
        if n_channels not in CHANNELS:
            raise DataError(f"{first}: image of {n_channels} channels, expected RGB or gray")
        return DatasetDescription(name=root.resolve().name, format=self.name, dims="2d", channels=CHANNELS[n_channels],
                                  labels=(LABEL,), encoding="binary", metric="dice", submission=self.submission,
                                  file_ending=".png", group_key=None, stratify_key="category")

    def samples(self, root: Path, split: str) -> SampleList:
        """Every image of `split` "train" with its label; other splits are empty. DataError naming a label
        that has no image."""
        if split != "train":
            return SampleList([])
        root = Path(root)
        inside = root.resolve()
        samples, unlabelled = [], []
        for category in _categories(root):
            images = image_files(category / "image", inside)
            labels = image_files(category / "label", inside)
            orphans = sorted(labels.keys() - images.keys())
            if orphans:
                raise DataError(f"{labels[orphans[0]]}: label without an image in {category / 'image'} "
                                f"({len(orphans)} such label(s))")
            for name, path in images.items():
                if name not in labels:
                    unlabelled.append(path)
                    continue
                sid = f"{category.name}/{name}"
                samples.append(Sample(id=sid, images=(path,), label=labels[name], group=sid, stratum=category.name))
        return SampleList(samples, unlabelled)

    def folder_samples(self, root: Path, folder: Path) -> SampleList:
        return single_file_samples(folder)

    def read_image(self, sample: Sample, description: DatasetDescription) -> np.ndarray:
        return read_channels(sample.images[0], description.n_channels, self.max_pixels)

    def read_label(self, sample: Sample, description: DatasetDescription) -> np.ndarray:
        return read_label_map(sample.label, sample.images[0], description.n_classes, self.max_pixels,
                              equal_rgb=True, foreground_255=True)


FORMAT = EbhiFormat()

"""Reader of the Kaggle Carvana Image Masking Challenge layout.

`train/<car>_<NN>.jpg` (16 views per car), `train_masks/<car>_<NN>_mask.gif` (car = nonzero),
`train_masks.csv` and `sample_submission.csv` (`img,rle_mask`: 1-indexed start/length pairs over the
(H, W) mask flattened row-major, as src.data.rle), `test/<car>_<NN>.jpg`; metadata.csv is not read.

A train image is labelled by its GIF, or by its CSV row when the GIF is missing; with both, the GIF is
the label and the row is `label_text`, decoded and compared with it when the label is read. Listing
decodes nothing; any fault is a DataError naming the file (and the CSV row).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from src.core.errors import DataError
from src.data import rle
from src.data.description import DatasetDescription
from src.data.formats.base import Sample, SampleList, open_image, read_image_file
from src.data.formats.files import single_file_samples
from src.data.layout import MAX_IMAGE_PIXELS, check_regular_file, read_csv_text

_VIEW = r"(?P<car>[0-9A-Za-z]+)_(?P<view>0[1-9]|[1-9][0-9])"
IMAGE_RE = re.compile(rf"^{_VIEW}\.(?:jpg|jpeg)$", re.IGNORECASE)
MASK_RE = re.compile(rf"^{_VIEW}_mask\.gif$", re.IGNORECASE)
NAMES = {IMAGE_RE: "<car>_<NN>.jpg", MASK_RE: "<car>_<NN>_mask.gif"}  # NN = 01..99
MASKS_CSV = "train_masks.csv"
SUBMISSION_COLUMNS = ("img", "rle_mask")  # of train_masks.csv too
SPLITS = ("train", "test")

# Carvana's rle_mask of a (H, W) mask: row-major, 1-indexed, '' for an empty mask.
encode_mask = rle.encode


def _car(key: str) -> str:
    """The car of `<car>_<NN>`."""
    return key.rsplit("_", 1)[0]


def _named_files(folder: Path, pattern: re.Pattern) -> dict[str, Path]:
    """`<car>_<NN>` -> file of `folder` named by `pattern` (hidden files skipped; {} without the folder);
    DataError naming the file on another name, one that is not a regular file inside `folder`, or two
    files of one `<car>_<NN>`."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    inside = folder.resolve()
    for path in sorted(folder.glob("*")):
        m = pattern.match(path.name)
        if not m:
            raise DataError(f"{path}: file name is not {NAMES[pattern]}")
        check_regular_file(path, inside)
        key = f"{m['car']}_{m['view']}"
        if key in found:
            raise DataError(f"{path}: a second file of {key} besides {found[key].name}")
        found[key] = path
    return found


def read_img_csv(path: Path) -> pd.DataFrame:
    """The `img,rle_mask` rows of train_masks.csv or sample_submission.csv ('' for an empty mask);
    DataError naming the file and row on a missing column, an img not named `<car>_<NN>.jpg`, or a
    second row for one img."""
    df = read_csv_text(path)
    if not set(SUBMISSION_COLUMNS) <= set(df.columns):
        raise DataError(f"{path}: needs columns {', '.join(SUBMISSION_COLUMNS)}; has {list(df.columns)[:5]}")
    for bad, what in ((df["img"].map(IMAGE_RE.match).isna(), f"is not named {NAMES[IMAGE_RE]}"),
                      (df["img"].duplicated(), "has a second row")):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path} row {i + 2}: img {df['img'].iloc[i]!r} {what}")
    return df


def _image_header(path: Path, max_pixels: int) -> tuple[int, int, tuple[str, ...]]:
    """(height, width, bands) from the image's header, nothing decoded; DataError naming the file when
    it has no readable header or more than `max_pixels` pixels."""
    try:
        with open_image(path, max_pixels) as image:
            return image.height, image.width, image.getbands()
    except OSError as exc:
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


def _read_mask_file(path: Path, max_pixels: int) -> np.ndarray:
    """A GIF mask as (H, W) uint8 0/1; DataError naming the file unless it is one channel of 0 and
    one car value (1 or 255)."""
    mask = read_image_file(path, max_pixels)
    if mask.ndim != 2:
        raise DataError(f"{path}: mask of shape {mask.shape}, expected one channel (a palette or gray GIF)")
    car = mask.max()
    if car not in (0, 1, 255) or np.any((mask != 0) & (mask != car)):
        raise DataError(f"{path}: mask values {np.unique(mask)[:8].tolist()}, expected 0 and 1 (or 0 and 255)")
    return (mask != 0).astype(np.uint8)


@dataclass(frozen=True)
class CarvanaFormat:
    max_pixels: int = MAX_IMAGE_PIXELS  # the cap of every image, mask and header read (src.data.formats.base)
    name = "carvana"
    label_scale = 1
    looked_for = "train/ with <car>_<NN>.jpg and train_masks/ or train_masks.csv"
    marker = MASKS_CSV
    submission = "carvana_csv"

    def detect(self, root: Path) -> bool:
        root = Path(root)
        train = root / "train"
        return (train.is_dir() and ((root / "train_masks").is_dir() or (root / MASKS_CSV).is_file())
                and any(IMAGE_RE.match(p.name) for p in train.iterdir()))

    def describe(self, root: Path) -> DatasetDescription:
        """The description; the channels are the bands of the first train image, which must be RGB."""
        root = Path(root)
        images = _named_files(root / "train", IMAGE_RE)
        if not images:
            raise DataError(f"{root / 'train'}: no {NAMES[IMAGE_RE]} images")
        first = images[min(images)]
        bands = _image_header(first, self.max_pixels)[2]
        if bands != ("R", "G", "B"):
            raise DataError(f"{first}: image of bands {', '.join(bands)}, expected R, G, B (Carvana images are RGB)")
        return DatasetDescription(name=root.resolve().name, format=self.name, dims="2d", channels=bands,
                                  labels=("car",), encoding="binary", metric="dice", submission=self.submission,
                                  file_ending=".jpg", group_key="car", stratify_key=None)

    def samples(self, root: Path, split: str) -> SampleList:
        """One sample per image of `split` (none without its folder), id `<car>_<NN>`, group the car;
        train images with neither a GIF nor a CSV row are `unlabelled`. DataError on a GIF or CSV row
        without its train image."""
        if split not in SPLITS:
            raise DataError(f"{root}: unknown split {split!r} (carvana has {', '.join(SPLITS)})")
        root = Path(root)
        images = _named_files(root / split, IMAGE_RE)
        if split == "test":
            return SampleList([Sample(key, (path,), group=_car(key)) for key, path in images.items()])
        masks = _named_files(root / "train_masks", MASK_RE)
        orphan = sorted(set(masks) - set(images))
        if orphan:
            raise DataError(f"{masks[orphan[0]]}: mask without its image in {root / 'train'}")
        texts = {}
        csv_path = root / MASKS_CSV
        if csv_path.is_file():
            df = read_img_csv(csv_path)
            names = {path.name: key for key, path in images.items()}
            for i, (img, text) in enumerate(zip(df["img"], df["rle_mask"])):
                if img not in names:
                    raise DataError(f"{csv_path} row {i + 2}: img {img!r} has no image in {root / 'train'}")
                texts[names[img]] = text
        samples, unlabelled = [], []
        for key, path in images.items():
            if key in masks or key in texts:
                samples.append(Sample(key, (path,), masks.get(key), _car(key), "", texts.get(key)))
            else:
                unlabelled.append(path)
        return SampleList(samples, unlabelled)

    def folder_samples(self, root: Path, folder: Path) -> SampleList:
        return single_file_samples(folder)

    def read_image(self, sample: Sample, description: DatasetDescription) -> np.ndarray:
        """(H, W, C) uint8 with C = description.n_channels; DataError naming the file otherwise."""
        path = sample.images[0]
        image = read_image_file(path, self.max_pixels)
        channels = 1 if image.ndim == 2 else image.shape[2]
        if channels != description.n_channels:
            raise DataError(f"{path}: {channels} channel(s), the dataset has {description.n_channels} "
                            f"({', '.join(description.channels)})")
        return image

    def read_label(self, sample: Sample, description: DatasetDescription) -> np.ndarray:
        """(H, W) uint8 0/1 of the GIF, or of the CSV row without one; DataError naming the files when
        the GIF's size is not the image's or the row does not decode to the GIF."""
        image = sample.images[0]
        if sample.label is None and sample.label_text is None:
            raise DataError(f"{image}: no label (neither a mask GIF nor a {MASKS_CSV} row)")
        height, width, _ = _image_header(image, self.max_pixels)
        mask = None
        if sample.label is not None:
            mask = _read_mask_file(sample.label, self.max_pixels)
            if mask.shape != (height, width):
                raise DataError(f"{sample.label}: mask of {mask.shape[0]}x{mask.shape[1]} (HxW) but its image "
                                f"{image} is {height}x{width}")
            if sample.label_text is None:
                return mask
        where = f"{image.parent.parent / MASKS_CSV}: row of {image.name}"
        try:
            decoded = rle.decode(sample.label_text, (height, width))
        except ValueError as exc:
            raise DataError(f"{where}: {exc}") from None
        if mask is None:
            return decoded
        differ = int(np.count_nonzero(decoded != mask))
        if differ:
            raise DataError(f"{where}: RLE disagrees with {sample.label} ({differ} pixels differ)")
        return mask


FORMAT = CarvanaFormat()

"""Reader of the Kaggle layout: `<split>/case{N}/case{N}_day{D}/scans/slice_{ZZZZ}_{W}_{H}_{sx}_{sy}.png`.

Every fact (size, spacing, slice count) is read from the files; any fault raises a DataError that
names the file or row. The width comes FIRST in the file name: an image has `height` rows.
"""
from __future__ import annotations

import re
import stat
import struct
from dataclasses import field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from src.core import artifacts
from src.core.errors import DataError
from src.data import rle

# The GI dataset's classes, in train.csv's row order; other datasets read theirs from their description (src.data.description).
CLASSES = ("large_bowel", "small_bowel", "stomach")
SLICE_RE = re.compile(r"^slice_(\d{4})_(\d+)_(\d+)_(\d+(?:\.\d+)?)_(\d+(?:\.\d+)?)\.png$")
CASE_DAY_RE = re.compile(r"^case(\d+)_day(\d+)$")
ID_RE = re.compile(r"^(case(\d+)_day(\d+))_slice_(\d{4})$")
INDEX_COLUMNS = ["id", "case", "day", "case_day", "slice", "width", "height", "sx", "sy", "path"]
MAX_IMAGE_PIXELS = 4096 * 4096  # per slice or 2D image, checked on the name and/or the header before decoding
MAX_IMAGE_PIXELS_HELP = (f"refuse a GI slice or 2D image (or label) of more pixels, from its name or header before "
                         f"decoding (default {MAX_IMAGE_PIXELS} = 4096 x 4096)")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def max_image_pixels_field():
    """`--max-image-pixels` of every command that reads images (prepare, submit, score): the cap of
    scan_split on the GI slices, of every decode and header read of a 2D format (src.data.formats.detect_format)."""
    return field(default=MAX_IMAGE_PIXELS, metadata={"help": MAX_IMAGE_PIXELS_HELP})


def check_max_pixels(max_pixels: int) -> None:
    """A DataError unless the --max-image-pixels cap is at least one pixel."""
    if max_pixels < 1:
        raise DataError(f"--max-image-pixels {max_pixels}: must be at least 1")


def slice_id(case_day: str, slice_number: int) -> str:
    return f"{case_day}_slice_{slice_number:04d}"


def parse_id(sid: str) -> tuple[str, int, int, int]:
    """`case123_day20_slice_0065` -> (case_day, case, day, slice)."""
    m = ID_RE.match(str(sid))
    if not m:
        raise ValueError(f"id {sid!r} is not of the form case{{N}}_day{{D}}_slice_{{ZZZZ}}")
    return m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))


def scan_split(data_dir: str | Path, split: str = "train", max_pixels: int = MAX_IMAGE_PIXELS) -> pd.DataFrame:
    """Index every slice PNG of a split: one row per slice, sorted by case, day, slice.

    Returns an empty frame (with the columns) when the split folder is missing or empty, as
    Kaggle's `test/` is during development. Raises DataError on a misnamed file, one that is not a
    regular file inside the split's folder (a FIFO, a device, a folder, a link pointing out), a slice whose
    name gives more than `max_pixels` pixels, a case-day whose slices differ in size or spacing, a
    duplicated or missing slice number.
    """
    check_max_pixels(max_pixels)
    root = Path(data_dir) / split
    rows = []
    if root.is_dir():
        inside = root.resolve()  # a linked split folder is the user's choice; links below it stay inside
        for path in sorted(root.glob("*/*/scans/*")):
            case_day = path.parent.parent.name
            cd = CASE_DAY_RE.match(case_day)
            if not cd or path.parent.parent.parent.name != f"case{cd.group(1)}":
                raise DataError(f"{path}: folder is not case{{N}}/case{{N}}_day{{D}}/scans")
            m = SLICE_RE.match(path.name)
            if not m:
                raise DataError(f"{path}: file name is not slice_ZZZZ_W_H_sx_sy.png")
            check_regular_file(path, inside)
            z, w, h, sx, sy = m.groups()
            check_pixels(path, int(w), int(h), max_pixels)
            rows.append((slice_id(case_day, int(z)), int(cd.group(1)), int(cd.group(2)), case_day,
                         int(z), int(w), int(h), float(sx), float(sy), str(path)))
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    if index.empty:
        return index
    index = index.sort_values(["case", "day", "slice"], kind="stable").reset_index(drop=True)
    for case_day, group in index.groupby("case_day", sort=False):
        _check_case_day(case_day, group)
    return index


def check_regular_file(path: Path, inside: Path) -> None:
    """DataError unless `path` is a regular file whose real path (links followed) lies in `inside`."""
    if not path.resolve().is_relative_to(inside):
        raise DataError(f"{path}: a link pointing outside its split folder {inside}")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
                "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode)
                else "a special file")
        raise DataError(f"{path}: not a regular file ({kind})")


def check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise DataError(f"{path}: image of {width}x{height} (WxH) pixels is empty")
    if width * height > max_pixels:
        raise DataError(f"{path}: image of {width}x{height} (WxH) = {width * height} pixels is over the cap of "
                        f"{max_pixels} (raise it with --max-image-pixels)")


def _check_case_day(case_day: str, group: pd.DataFrame) -> None:
    dup = group["slice"].duplicated()
    if dup.any():
        raise DataError(f"{group['path'][dup].iloc[0]}: duplicate slice number {group['slice'][dup].iloc[0]} in {case_day}")
    numbers = group["slice"].to_numpy()
    expected = np.arange(numbers.min(), numbers.min() + len(numbers))
    if not np.array_equal(numbers, expected):
        missing = sorted(set(range(numbers.min(), numbers.max() + 1)) - set(numbers.tolist()))
        raise DataError(f"{Path(group['path'].iloc[0]).parent}: missing slice(s) {missing[:5]} in {case_day}")
    for col in ("width", "height", "sx", "sy"):
        if group[col].nunique() != 1:
            raise DataError(f"{Path(group['path'].iloc[0]).parent}: slices of {case_day} differ in {col}")


def png_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR header, read before anything is decoded; DataError if it has none."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise DataError(f"{path}: unreadable PNG (no PNG signature and IHDR header)")
    width, height = struct.unpack(">II", head[16:24])
    return height, width


def read_slice(path: str | Path, height: int, width: int) -> np.ndarray:
    """Load one 16-bit grayscale PNG as uint16 (height, width); DataError if unreadable, 8-bit or misshaped.

    The header's size must equal the name's (capped by scan_split) before the pixels are decoded."""
    size = png_size(path)
    if size != (height, width):
        raise DataError(f"{path}: image is {size[0]}x{size[1]} (HxW) but its name says {height}x{width}")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{path}: unreadable PNG")
    if img.dtype != np.uint16:
        raise DataError(f"{path}: expected a 16-bit grayscale PNG, got {img.dtype}")
    if img.ndim != 2:
        raise DataError(f"{path}: expected one channel, got shape {img.shape}")
    return img


def read_csv_text(csv_path: Path) -> pd.DataFrame:
    """A CSV of text cells ('' for empty); DataError naming the file if it is empty, binary or malformed."""
    try:
        return pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        lines = str(exc).splitlines() or [type(exc).__name__]
        raise DataError(f"{csv_path}: cannot read CSV ({lines[0]})") from None


def check_id_class_rows(df: pd.DataFrame, csv_path: Path) -> None:
    """DataError naming the row unless every class is known, every id well formed, every (id, class) once."""
    bad_class = ~df["class"].isin(CLASSES)
    if bad_class.any():
        i = int(np.flatnonzero(bad_class)[0])
        raise DataError(f"{csv_path} row {i + 2}: unknown class {df['class'].iloc[i]!r} (expected one of {', '.join(CLASSES)})")
    bad_id = ~df["id"].str.fullmatch(ID_RE.pattern)
    if bad_id.any():
        i = int(np.flatnonzero(bad_id)[0])
        raise DataError(f"{csv_path} row {i + 2}: malformed id {df['id'].iloc[i]!r}")
    dup = df.duplicated(["id", "class"])
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataError(f"{csv_path} row {i + 2}: duplicate row for id {df['id'].iloc[i]} class {df['class'].iloc[i]}")


def read_labels(csv_path: str | Path) -> pd.DataFrame:
    """Read train.csv (or a truth/submission file): columns id, class, segmentation (or predicted).

    Returns columns id, class, rle with '' for empty masks. DataError for missing columns, unknown
    classes, malformed ids, duplicate (id, class) rows, or malformed RLE (naming the CSV row).
    """
    csv_path = Path(csv_path)
    df = read_csv_text(csv_path)
    rle_col = next((c for c in ("segmentation", "predicted") if c in df.columns), None)
    if "id" not in df.columns or "class" not in df.columns or rle_col is None:
        raise DataError(f"{csv_path}: needs columns id, class and segmentation (or predicted); has {list(df.columns)}")
    df = df.rename(columns={rle_col: "rle"})[["id", "class", "rle"]]
    check_id_class_rows(df, csv_path)
    for i, text in enumerate(df["rle"].tolist()):
        if text:
            try:
                rle.parse_runs(text)
            except ValueError as exc:
                raise DataError(f"{csv_path} row {i + 2}: {exc}") from None
    return df


def masks_for_case_day(labels: pd.DataFrame, ids: list[str], height: int, width: int,
                       source: str = "train.csv", order: str = "C") -> np.ndarray:
    """Decode the rows of `labels` (as from read_labels) for `ids` into a uint8 (Z, 3, H, W) volume.

    `labels` must be indexed by (id, class) for speed; rows absent from it stay empty.
    """
    out = np.zeros((len(ids), len(CLASSES), height, width), dtype=np.uint8)
    for z, sid in enumerate(ids):
        for c, cls in enumerate(CLASSES):
            text = labels.get((sid, cls), "")
            if text:
                try:
                    out[z, c] = rle.decode(text, (height, width), order=order)
                except ValueError as exc:
                    raise DataError(f"{source}: id {sid} class {cls}: {exc}") from None
    return out


def check_labels_match_images(labels: pd.DataFrame, index: pd.DataFrame, csv_path: str | Path) -> None:
    """Every id in the CSV has images and every image has its three rows; DataError naming the first culprit."""
    label_ids = set(labels["id"])
    image_ids = set(index["id"])
    orphan = sorted(label_ids - image_ids)
    if orphan:
        raise DataError(f"{csv_path}: id {orphan[0]} has no image ({len(orphan)} such ids)")
    unlabelled = sorted(image_ids - label_ids)
    if unlabelled:
        path = index.set_index("id").loc[unlabelled[0], "path"]
        raise DataError(f"{path}: extra slice with no rows in {csv_path} ({len(unlabelled)} such slices)")
    counts = labels.groupby("id")["class"].size()
    short = counts[counts != len(CLASSES)]
    if len(short):
        raise DataError(f"{csv_path}: id {short.index[0]} has {short.iloc[0]} rows, expected {len(CLASSES)}")


def load_prediction(path: str | Path, mmap: bool = False, image: bool = False) -> artifacts.Prediction:
    """src.core.artifacts.load_prediction with the GI class count: a volume's (Z, 3) presence or (Z, 3, H, W)
    probabilities (a box record, or with `image` a 2D image's (K, H, W), as there)."""
    return artifacts.load_prediction(path, mmap, image, classes=len(CLASSES))


def prediction_shape(path: str | Path, image: bool = False) -> tuple[int, ...]:
    """src.core.artifacts.prediction_shape of a GI prediction (its class axis checked as load_prediction does)."""
    return artifacts.prediction_shape(path, image, classes=len(CLASSES))

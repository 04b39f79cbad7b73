"""Writers of 2D predictions in a dataset's submission form: Carvana's `img,rle_mask` CSV, checked
against sample_submission.csv, and label images named like the inputs. Both write atomically: a
temporary file beside the target, renamed only when complete, removed on any error."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from src.core.atomic import atomic_path
from src.core.errors import DataError
from src.data.description import DatasetDescription
from src.data.formats.carvana import SUBMISSION_COLUMNS, encode_mask, read_img_csv

LABEL_ENDINGS = (".png", ".tif", ".tiff")  # lossless 8-bit; nnU-Net's 2D endings but .jpg


def write_carvana_csv(target: str | Path, rows: Iterable[tuple[str, np.ndarray]], sample_csv: str | Path) -> int:
    """Stream (img, (H, W) mask) rows into the CSV `target` (one mask in memory at a time) and return
    their count. The img names must be those of `sample_csv`, each once: an extra or repeated one stops
    the writing, a missing one is found at the end; each is a one-line DataError naming the file and the
    first culprit, and nothing is written."""
    sample_csv, target = Path(sample_csv), Path(target)
    expected = read_img_csv(sample_csv)["img"].tolist()
    wanted, written = set(expected), set()
    with atomic_path(target, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(SUBMISSION_COLUMNS)
            for img, mask in rows:
                if img not in wanted:
                    raise DataError(f"{sample_csv}: has no img {img!r} (written to {target})")
                if img in written:
                    raise DataError(f"{target}: img {img!r} written twice")
                written.add(img)
                out.writerow((img, encode_mask(mask)))
        missing = [img for img in expected if img not in written]
        if missing:
            raise DataError(f"{sample_csv}: img {missing[0]!r} has no row in {target} ({len(missing)} missing)")
    return len(written)


def label_image_path(out_dir: str | Path, sample_id: str, ending: str) -> Path:
    """`<out_dir>/<sample_id><ending>`; DataError unless the id is a relative '/'-separated path of plain
    names (no '', '.', '..', '\\') that stays inside `out_dir`, links resolved."""
    parts = sample_id.split("/")
    if any(part in ("", ".", "..") for part in parts) or "\\" in sample_id or "\0" in sample_id:
        raise DataError(f"{out_dir}: sample id {sample_id!r} is not a relative path of plain names")
    path = Path(out_dir, *parts[:-1], parts[-1] + ending)
    if not path.resolve().is_relative_to(Path(out_dir).resolve()):
        raise DataError(f"{path}: sample id {sample_id!r} leads outside {out_dir}")
    return path


def label_ending(description: DatasetDescription) -> str:
    """The ending of a dataset's predicted label images: its own file ending when lossless, else .png
    (Carvana's .jpg)."""
    return description.file_ending if description.file_ending.lower() in LABEL_ENDINGS else ".png"


def write_label_image(out_dir: str | Path, sample_id: str, index_map: np.ndarray, ending: str,
                      scale: int = 1) -> Path:
    """Write the (H, W) index map 0..K as the 8-bit gray label image `<out_dir>/<sample_id><ending>`
    (subfolders created for EBHI's `<category>/<name>` ids), atomically. `scale` is the dataset's
    ImageFormat.label_scale, so the file reads as the dataset's own labels: class k written as
    k * scale (EBHI's 0/255 masks; nnU-Net's 0..K). Returns the path."""
    if ending.lower() not in LABEL_ENDINGS:
        raise DataError(f"label ending {ending!r}: not one of {', '.join(LABEL_ENDINGS)} (lossless 8-bit)")
    index_map = np.asarray(index_map)
    if index_map.ndim != 2 or index_map.size == 0:
        raise DataError(f"sample {sample_id!r}: label of shape {index_map.shape}, expected (H, W)")
    if index_map.min() < 0 or int(index_map.max()) * scale > 255:
        raise DataError(f"sample {sample_id!r}: label values {int(index_map.min())}..{int(index_map.max())} "
                        f"times {scale} do not fit 8 bits")
    path = label_image_path(out_dir, sample_id, ending)
    with atomic_path(path, suffix=ending) as tmp:
        Image.fromarray((index_map.astype(np.uint16) * scale).astype(np.uint8)).save(tmp)
    return path

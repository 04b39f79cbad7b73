"""Reader of the Kaggle layout (src.data.layout): the facts it reads and every fault it reports."""
from __future__ import annotations

import re
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from src.core.errors import DataError
from src.data.layout import (
    CLASSES,
    INDEX_COLUMNS,
    check_labels_match_images,
    masks_for_case_day,
    parse_id,
    read_labels,
    read_slice,
    scan_split,
    slice_id,
)


def one_line_error(func, *args, match: str, **kwargs) -> str:
    """Call func, expect a DataError whose one-line message matches `match`; return the message."""
    with pytest.raises(DataError, match=match) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- happy path ---------------------------------------------------------------------------------

def test_scan_split_reads_sizes_and_spacing_from_names(tiny_dataset):
    ds = tiny_dataset()
    index = scan_split(ds.root, "train")
    assert list(index.columns) == INDEX_COLUMNS
    assert len(index) == sum(len(v) for v in ds.images.values())
    assert index.equals(index.sort_values(["case", "day", "slice"]).reset_index(drop=True))
    for case_day, image in ds.images.items():
        rows = index[index["case_day"] == case_day]
        assert rows["id"].tolist() == [slice_id(case_day, z) for z in range(1, len(image) + 1)]
        assert (rows["height"] == image.shape[1]).all() and (rows["width"] == image.shape[2]).all()
    case2 = index[index["case_day"] == "case2_day0"].iloc[0]
    assert (case2["case"], case2["day"], case2["sx"], case2["sy"]) == (2, 0, 1.63, 1.63)


def test_read_slice_loads_16_bit_height_by_width(tiny_dataset):
    ds = tiny_dataset()
    index = scan_split(ds.root, "train")
    row = index[index["case_day"] == "case1_day0"].iloc[2]
    img = read_slice(row["path"], row["height"], row["width"])
    assert img.dtype == np.uint16 and img.shape == (64, 80)
    assert img.max() > 255
    np.testing.assert_array_equal(img, ds.images["case1_day0"][2])


@pytest.mark.parametrize("make_folder", [False, True])
def test_missing_or_empty_test_split_is_an_empty_frame(tiny_dataset, make_folder):
    ds = tiny_dataset()
    if make_folder:
        (ds.root / "test").mkdir()
    index = scan_split(ds.root, "test")
    assert index.empty and list(index.columns) == INDEX_COLUMNS


def test_labels_decode_to_the_written_masks(tiny_dataset):
    ds = tiny_dataset()
    labels = read_labels(ds.csv)
    assert list(labels.columns) == ["id", "class", "rle"]
    assert (labels["rle"] == "").any() and (labels["rle"] != "").any()
    index = scan_split(ds.root, "train")
    check_labels_match_images(labels, index, ds.csv)
    by_key = labels.set_index(["id", "class"])["rle"]
    for case_day, mask in ds.masks.items():
        ids = index.loc[index["case_day"] == case_day, "id"].tolist()
        decoded = masks_for_case_day(by_key, ids, mask.shape[2], mask.shape[3])
        assert decoded.dtype == np.uint8
        np.testing.assert_array_equal(decoded, mask)


def test_submission_column_predicted_is_accepted(tiny_dataset):
    ds = tiny_dataset(train=(), test=[(4, 1, 64, 72, 8)])
    labels = read_labels(ds.root / "sample_submission.csv")
    assert len(labels) == 8 * len(CLASSES) and (labels["rle"] == "").all()
    check_labels_match_images(labels, scan_split(ds.root, "test"), "sample_submission.csv")


def test_parse_id():
    assert parse_id("case123_day20_slice_0065") == ("case123_day20", 123, 20, 65)
    with pytest.raises(ValueError):
        parse_id("case123_slice_0065")


# ---- the image tree -----------------------------------------------------------------------------

def _scans(ds, case_day="case1_day0"):
    return sorted((ds.root / "train" / case_day.split("_")[0] / case_day / "scans").glob("*.png"))


def _misname(ds):
    path = _scans(ds)[0]
    path.rename(path.with_name("slice_1_80_64_1.50_1.50.png"))
    return "slice_1_80_64_1.50_1.50.png: file name is not"


def _wrong_folder(ds):
    shutil.copytree(ds.root / "train" / "case1" / "case1_day0", ds.root / "train" / "case1" / "case2_day0")
    return r"case1/case2_day0/scans/slice_0001_.*folder is not"


def _missing_slice(ds):
    _scans(ds)[3].unlink()
    return r"case1_day0/scans: missing slice\(s\) \[4\] in case1_day0"


def _duplicate_number(ds):
    path = _scans(ds)[1]
    shutil.copy(path, path.with_name("slice_0002_80_64_1.60_1.60.png"))
    return "slice_0002_80_64_1.*duplicate slice number 2 in case1_day0"


def _mixed_sizes(ds):
    path = _scans(ds)[-1]
    cv2.imwrite(str(path.with_name(path.name.replace("_80_64_", "_81_64_"))), np.zeros((64, 81), np.uint16))
    path.unlink()
    return "case1_day0/scans: slices of case1_day0 differ in width"


@pytest.mark.parametrize("mutate", [_misname, _wrong_folder, _missing_slice, _duplicate_number, _mixed_sizes])
def test_scan_split_faults(tiny_dataset, mutate):
    ds = tiny_dataset()
    one_line_error(scan_split, ds.root, "train", match=mutate(ds))


# ---- one slice ----------------------------------------------------------------------------------

def test_unreadable_png(tmp_path):
    path = tmp_path / "slice_0001_80_64_1.50_1.50.png"
    path.write_bytes(b"not a png at all" * 8)
    one_line_error(read_slice, path, 64, 80, match=re.escape(f"{path}: unreadable PNG"))


def test_eight_bit_png(tmp_path):
    path = tmp_path / "slice_0001_80_64_1.50_1.50.png"
    cv2.imwrite(str(path), np.full((64, 80), 7, np.uint8))
    one_line_error(read_slice, path, 64, 80, match=re.escape(str(path)) + ".*16-bit.*uint8")


def test_colour_png(tmp_path):
    path = tmp_path / "slice_0001_80_64_1.50_1.50.png"
    cv2.imwrite(str(path), np.full((64, 80, 3), 700, np.uint16))
    one_line_error(read_slice, path, 64, 80, match=re.escape(str(path)) + ".*one channel")


def test_shape_must_match_the_name_width_first(tiny_dataset):
    ds = tiny_dataset()
    path = _scans(ds)[0]  # named ..._80_64_...: 80 wide, 64 high
    cv2.imwrite(str(path), np.zeros((80, 64), np.uint16))  # written transposed
    index = scan_split(ds.root, "train")
    row = index[index["path"] == str(path)].iloc[0]
    one_line_error(read_slice, row["path"], row["height"], row["width"],
                   match=re.escape(f"{path}: image is 80x64 (HxW) but its name says 64x80"))


# ---- train.csv ----------------------------------------------------------------------------------

GOOD_ROWS = [("case1_day0_slice_0001", cls, "") for cls in CLASSES]


def _csv(tmp_path, rows, columns=("id", "class", "segmentation")):
    path = tmp_path / "train.csv"
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


def test_missing_columns(tmp_path):
    path = _csv(tmp_path, [r[:2] for r in GOOD_ROWS], columns=("id", "class"))
    one_line_error(read_labels, path, match=re.escape(f"{path}: needs columns id, class and segmentation"))


@pytest.mark.parametrize("bad_row, match", [
    (("case1_day0_slice_0002", "liver", ""), "row 5: unknown class 'liver'"),
    (("case1_slice_0002", "stomach", ""), "row 5: malformed id 'case1_slice_0002'"),
    (("case1_day0_slice_0001", "stomach", "3 4"), "row 5: duplicate row for id case1_day0_slice_0001 class stomach"),
    (("case1_day0_slice_0002", "stomach", "3 x"), "row 5: non-integer token"),
    (("case1_day0_slice_0002", "stomach", "3 4 9"), "row 5: odd number of values"),
])
def test_bad_csv_rows_are_named(tmp_path, bad_row, match):
    path = _csv(tmp_path, GOOD_ROWS + [bad_row])
    one_line_error(read_labels, path, match=re.escape(f"{path} {match}"))


def test_unreadable_csv(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"")
    one_line_error(read_labels, path, match=re.escape(f"{path}: cannot read CSV"))


def _drop_rows(ds, keep):
    labels = pd.read_csv(ds.csv, dtype=str, keep_default_na=False)
    labels[keep(labels)].to_csv(ds.csv, index=False)


def test_id_without_image(tiny_dataset):
    ds = tiny_dataset()
    _scans(ds, "case5_day7")[-1].unlink()  # the last slice: the tree stays consistent
    labels, index = read_labels(ds.csv), scan_split(ds.root, "train")
    one_line_error(check_labels_match_images, labels, index, ds.csv,
                   match=re.escape(f"{ds.csv}: id case5_day7_slice_0009 has no image (1 such ids)"))


def test_image_without_rows(tiny_dataset):
    ds = tiny_dataset()
    _drop_rows(ds, lambda df: df["id"] != "case1_day3_slice_0005")
    labels, index = read_labels(ds.csv), scan_split(ds.root, "train")
    one_line_error(check_labels_match_images, labels, index, ds.csv,
                   match=r"slice_0005_80_64_1\.50_1\.50\.png: extra slice with no rows in .*train\.csv")


def test_id_with_two_rows(tiny_dataset):
    ds = tiny_dataset()
    _drop_rows(ds, lambda df: ~((df["id"] == "case2_day0_slice_0007") & (df["class"] == "stomach")))
    labels, index = read_labels(ds.csv), scan_split(ds.root, "train")
    one_line_error(check_labels_match_images, labels, index, ds.csv,
                   match=re.escape(f"{ds.csv}: id case2_day0_slice_0007 has 2 rows, expected 3"))


@pytest.mark.parametrize("text, match", [
    (f"{64 * 80 - 2} 5", "runs past the image of 64x80"),
    ("10 5 12 3", "not increasing"),
    ("0 3", "start below 1"),
])
def test_bad_runs_name_the_id_and_class(text, match):
    labels = pd.Series({("case1_day0_slice_0002", "small_bowel"): text})
    message = one_line_error(masks_for_case_day, labels, ["case1_day0_slice_0001", "case1_day0_slice_0002"], 64, 80,
                             source="data/train.csv", match=match)
    assert message.startswith("data/train.csv: id case1_day0_slice_0002 class small_bowel:")

"""Reader of the Carvana layout (src.data.formats.carvana): what it lists and reads, and each fault it reports."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from src.data import rle
from src.data.formats.base import Sample
from src.data.formats.carvana import FORMAT, encode_mask, read_img_csv
from tests.expect import fault

H, W = 16, 24
CARS = ("0cdf5b5d0ce1", "fff9b3a5373f")
VIEWS = (1, 2, 16)


def car_mask(seed: int, height: int = H, width: int = W) -> np.ndarray:
    """A 0/1 blob that differs per seed."""
    yy, xx = np.mgrid[:height, :width]
    cy, cx = height / 2 + seed % 3 - 1, width / 2 + seed % 5 - 2
    return ((((yy - cy) / (height / 3)) ** 2 + ((xx - cx) / (width / 3)) ** 2) < 1).astype(np.uint8)


def write_jpg(path: Path, height: int = H, width: int = W, mode: str = "RGB") -> None:
    rng = np.random.default_rng(len(path.name))
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, "JPEG")


def write_gif(path: Path, mask: np.ndarray, car: int = 1) -> None:
    """Carvana's palette GIF (indices 0/1); car=255: a gray GIF of 0/255."""
    if car == 1:
        Image.fromarray(mask, "P").save(path)
    else:
        Image.fromarray(mask * car, "L").save(path, optimize=False)


def make_carvana(root: Path, cars=CARS, views=VIEWS, gif=True, csv=True, test=("a1b2c3_01", "a1b2c3_02")) -> Path:
    """A tiny Carvana layout: every train image with its GIF and its CSV row; returns root."""
    for folder in ("train", "train_masks", "test"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for c, car in enumerate(cars):
        for view in views:
            stem = f"{car}_{view:02d}"
            write_jpg(root / "train" / f"{stem}.jpg")
            mask = car_mask(c * 16 + view)
            if gif:
                write_gif(root / "train_masks" / f"{stem}_mask.gif", mask)
            rows.append((f"{stem}.jpg", rle.encode(mask)))
    if csv:
        pd.DataFrame(rows, columns=["img", "rle_mask"]).to_csv(root / "train_masks.csv", index=False)
    for stem in test:
        write_jpg(root / "test" / f"{stem}.jpg")
    pd.DataFrame([(f"{s}.jpg", "1 1") for s in test], columns=["img", "rle_mask"]).to_csv(
        root / "sample_submission.csv", index=False)
    return root


def sample_of(root: Path, stem: str) -> Sample:
    return next(s for s in FORMAT.samples(root, "train").samples if s.id == stem)


def read_pair(root: Path, stem: str):
    sample = sample_of(root, stem)
    description = FORMAT.describe(root)
    return FORMAT.read_image(sample, description), FORMAT.read_label(sample, description)



# ---- the layout read -----------------------------------------------------------------------------

def test_detect(tmp_path):
    root = make_carvana(tmp_path / "carvana")
    assert FORMAT.detect(root)
    (root / "train_masks.csv").unlink()
    assert FORMAT.detect(root)  # the GIFs alone
    (tmp_path / "empty").mkdir()
    assert not FORMAT.detect(tmp_path / "empty")
    gi = tmp_path / "gi"
    (gi / "train" / "case1" / "case1_day0" / "scans").mkdir(parents=True)
    (gi / "train.csv").write_text("id,class,segmentation\n")
    assert not FORMAT.detect(gi)
    bare = make_carvana(tmp_path / "bare", gif=False, csv=False)
    assert not FORMAT.detect(bare / "train")
    (bare / "train_masks").rmdir()
    assert not FORMAT.detect(bare)  # images without any label source


def test_describe(tmp_path):
    d = FORMAT.describe(make_carvana(tmp_path / "cars"))
    assert (d.name, d.format, d.dims, d.channels, d.labels) == ("cars", "carvana", "2d", ("R", "G", "B"), ("car",))
    assert (d.encoding, d.metric, d.submission, d.file_ending, d.group_key, d.stratify_key) == (
        "binary", "dice", "carvana_csv", ".jpg", "car", None)


def test_describe_refuses_a_gray_first_image(tmp_path):
    root = make_carvana(tmp_path)
    first = root / "train" / f"{CARS[0]}_01.jpg"
    write_jpg(first, mode="L")
    fault(FORMAT.describe, root, names=[first], match="bands L, expected R, G, B")


def test_samples_ids_groups_and_unlabelled(tmp_path):
    root = make_carvana(tmp_path)
    write_jpg(root / "train" / "abc_05.jpg")  # neither a GIF nor a CSV row
    listed = FORMAT.samples(root, "train")
    assert [s.id for s in listed.samples] == [f"{c}_{v:02d}" for c in CARS for v in VIEWS]
    assert {s.group for s in listed.samples} == set(CARS)
    first = listed.samples[0]
    assert first.images == (root / "train" / f"{CARS[0]}_01.jpg",)
    assert first.label == root / "train_masks" / f"{CARS[0]}_01_mask.gif"
    assert first.label_text == rle.encode(car_mask(1)) and first.stratum == ""
    assert listed.unlabelled == [root / "train" / "abc_05.jpg"]
    assert "1 image(s) without a label" in listed.report()
    test = FORMAT.samples(root, "test")
    assert [(s.id, s.group, s.label, s.label_text) for s in test.samples] == [
        ("a1b2c3_01", "a1b2c3", None, None), ("a1b2c3_02", "a1b2c3", None, None)]
    assert FORMAT.samples(tmp_path / "nowhere", "test").samples == []
    fault(FORMAT.samples, root, "val", names=["'val'"])


def test_read_image_and_label(tmp_path):
    root = make_carvana(tmp_path)
    image, label = read_pair(root, f"{CARS[1]}_16")
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert label.dtype == np.uint8 and np.array_equal(label, car_mask(16 + 16))


def test_label_of_a_gray_gif_of_0_and_255(tmp_path):
    root = make_carvana(tmp_path, csv=False)
    write_gif(root / "train_masks" / f"{CARS[0]}_02_mask.gif", car_mask(2), car=255)
    assert np.array_equal(read_pair(root, f"{CARS[0]}_02")[1], car_mask(2))


def test_label_from_the_csv_alone_without_its_gif(tmp_path):
    root = make_carvana(tmp_path)
    (root / "train_masks" / f"{CARS[0]}_02_mask.gif").unlink()
    sample = sample_of(root, f"{CARS[0]}_02")
    assert sample.label is None and sample.label_text
    assert np.array_equal(FORMAT.read_label(sample, FORMAT.describe(root)), car_mask(2))


def test_gifs_without_a_csv(tmp_path):
    root = make_carvana(tmp_path, csv=False)
    sample = sample_of(root, f"{CARS[0]}_01")
    assert sample.label_text is None
    assert np.array_equal(FORMAT.read_label(sample, FORMAT.describe(root)), car_mask(1))


def test_encode_mask_is_carvanas_rle():
    mask = np.zeros((3, 4), np.uint8)
    mask[0, 3] = mask[1, 0] = mask[1, 1] = mask[2, 3] = 1
    assert encode_mask(mask) == "4 3 12 1"  # row-major, 1-indexed: 4,5,6 then 12
    assert encode_mask(np.zeros((3, 4), np.uint8)) == ""
    big = car_mask(0, 1280, 1918)
    assert np.array_equal(rle.decode(encode_mask(big), big.shape), big)


def test_read_img_csv_of_the_sample_submission(tmp_path):
    root = make_carvana(tmp_path)
    assert read_img_csv(root / "sample_submission.csv")["img"].tolist() == ["a1b2c3_01.jpg", "a1b2c3_02.jpg"]
    bad = tmp_path / "bad.csv"
    bad.write_text("img,predicted\nx_01.jpg,1 1\n")
    fault(read_img_csv, bad, names=[bad], match="needs columns img, rle_mask")


# ---- faults: each a one-line DataError naming the file -------------------------------------------

def test_label_of_another_size_than_its_image(tmp_path):
    root = make_carvana(tmp_path, csv=False)
    gif = root / "train_masks" / f"{CARS[0]}_01_mask.gif"
    write_gif(gif, car_mask(1, H + 2, W))
    fault(read_pair, root, f"{CARS[0]}_01", names=[gif, root / "train" / f"{CARS[0]}_01.jpg"], match="18x24")


def test_label_values_outside_0_and_1(tmp_path):
    root = make_carvana(tmp_path, csv=False)
    gif = root / "train_masks" / f"{CARS[0]}_01_mask.gif"
    write_gif(gif, car_mask(1) * 2 + (np.arange(W) % 2 == 0).astype(np.uint8))
    fault(read_pair, root, f"{CARS[0]}_01", names=[gif, "[0, 1, 2, 3]"])


def test_rgb_label_where_a_map_is_expected(tmp_path):
    root = make_carvana(tmp_path, csv=False)
    gif = root / "train_masks" / f"{CARS[0]}_01_mask.gif"
    Image.fromarray(np.repeat(car_mask(1)[..., None] * 255, 3, axis=2), "RGB").save(gif, "PNG")  # an RGB mask, misnamed
    fault(read_pair, root, f"{CARS[0]}_01", names=[gif], match="one channel")


def test_two_images_with_one_name(tmp_path):
    root = make_carvana(tmp_path)
    twin = root / "train" / f"{CARS[0]}_02.JPEG"
    write_jpg(twin)
    fault(FORMAT.samples, root, "train", names=[f"{CARS[0]}_02.jpg", twin.name], match="second file")


def test_truncated_jpeg(tmp_path):
    root = make_carvana(tmp_path)
    path = root / "train" / f"{CARS[0]}_01.jpg"
    data = path.read_bytes()
    sample, description = sample_of(root, f"{CARS[0]}_01"), FORMAT.describe(root)
    for cut in (len(data) // 2, len(data) - 2):
        path.write_bytes(data[:cut])
        fault(FORMAT.read_image, sample, description, names=[path], match="truncated")


def test_truncated_gif(tmp_path):
    root = make_carvana(tmp_path, csv=False)
    gif = root / "train_masks" / f"{CARS[0]}_01_mask.gif"
    gif.write_bytes(gif.read_bytes()[:-6])
    fault(read_pair, root, f"{CARS[0]}_01", names=[gif], match="truncated")


def test_csv_rle_disagreeing_with_the_gif(tmp_path):
    root = make_carvana(tmp_path)
    csv = root / "train_masks.csv"
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    mask = car_mask(2)
    mask[0, :3] = 1
    df.loc[1, "rle_mask"] = rle.encode(mask)
    df.to_csv(csv, index=False)
    gif = root / "train_masks" / f"{CARS[0]}_02_mask.gif"
    fault(read_pair, root, f"{CARS[0]}_02", names=[f"{csv}: row of {CARS[0]}_02.jpg", gif, "(3 pixels differ)"])


def test_csv_rle_past_the_image(tmp_path):
    root = make_carvana(tmp_path)
    csv = root / "train_masks.csv"
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    df.loc[0, "rle_mask"] = f"{H * W} 2"
    df.to_csv(csv, index=False)
    fault(read_pair, root, f"{CARS[0]}_01", names=[f"{csv}: row of {CARS[0]}_01.jpg"], match="runs past")


def test_csv_row_without_an_image(tmp_path):
    root = make_carvana(tmp_path)
    (root / "train" / f"{CARS[1]}_02.jpg").unlink()
    (root / "train_masks" / f"{CARS[1]}_02_mask.gif").unlink()
    csv = root / "train_masks.csv"
    fault(FORMAT.samples, root, "train", names=[f"{csv} row 6", f"{CARS[1]}_02.jpg"], match="has no image")


def test_duplicate_csv_rows(tmp_path):
    root = make_carvana(tmp_path)
    csv = root / "train_masks.csv"
    with csv.open("a") as f:
        f.write(f"{CARS[0]}_01.jpg,1 1\n")
    fault(FORMAT.samples, root, "train", names=[f"{csv} row 8", f"{CARS[0]}_01.jpg"], match="second row")


def test_mask_without_its_image(tmp_path):
    root = make_carvana(tmp_path, csv=False)
    (root / "train" / f"{CARS[1]}_16.jpg").unlink()
    fault(FORMAT.samples, root, "train", names=[root / "train_masks" / f"{CARS[1]}_16_mask.gif"])


@pytest.mark.parametrize("name", ["car_1.jpg", "car_00.jpg", "car_101.jpg", "car-01.jpg", "car_01.png", "car_01"])
def test_misnamed_file(tmp_path, name):
    root = make_carvana(tmp_path)
    path = root / "train" / name
    write_jpg(path)
    fault(FORMAT.samples, root, "train", names=[path], match="<car>_<NN>.jpg")


def test_misnamed_mask(tmp_path):
    root = make_carvana(tmp_path)
    path = root / "train_masks" / f"{CARS[0]}_01.gif"
    write_gif(path, car_mask(1))
    fault(FORMAT.samples, root, "train", names=[path], match="<car>_<NN>_mask.gif")


def test_not_a_regular_file(tmp_path):
    root = make_carvana(tmp_path)
    folder = root / "test" / "x_03.jpg"
    folder.mkdir()
    fault(FORMAT.samples, root, "test", names=[folder], match="not a regular file")
    folder.rmdir()
    outside = tmp_path / "outside.jpg"
    write_jpg(outside)
    (root / "test" / "x_03.jpg").symlink_to(outside)
    fault(FORMAT.samples, root, "test", names=[root / "test" / "x_03.jpg"], match="outside")


def test_read_label_of_a_test_image(tmp_path):
    root = make_carvana(tmp_path)
    sample = FORMAT.samples(root, "test").samples[0]
    fault(FORMAT.read_label, sample, FORMAT.describe(root), names=[sample.images[0]], match="no label")


def test_image_of_another_channel_count_than_the_dataset(tmp_path):
    root = make_carvana(tmp_path)
    description = FORMAT.describe(root)
    path = root / "train" / f"{CARS[1]}_01.jpg"
    write_jpg(path, mode="L")
    fault(FORMAT.read_image, sample_of(root, f"{CARS[1]}_01"), description, names=[path], match="1 channel")

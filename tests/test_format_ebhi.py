"""Reader of EBHI-Seg (src.data.formats.ebhi): detection, description, samples, pixels and every fault."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.data.formats.ebhi import FORMAT
from tests.expect import fault

SIZE = 16


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def rgb(seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def mask(seed: int, size: int = SIZE) -> np.ndarray:
    """A 0/255 mask with some foreground."""
    out = np.zeros((size, size), np.uint8)
    out[seed % 4: seed % 4 + 6, 3:11] = 255
    return out


def ebhi(root: Path, counts: dict[str, int] | None = None) -> Path:
    """An EBHI-Seg layout under `root`: `counts` images (each with its mask) per category."""
    for c, (category, n) in enumerate((counts or {"Normal": 2, "Polyp": 1}).items()):
        for i in range(n):
            write_png(root / category / "image" / f"img{i}.png", rgb(10 * c + i))
            write_png(root / category / "label" / f"img{i}.png", mask(10 * c + i))
    return root



def first(root: Path):
    """The first train sample of `root` and the description."""
    return FORMAT.samples(root, "train").samples[0], FORMAT.describe(root)


# ---- detection and description ------------------------------------------------------------------

def test_detects_the_layout_but_not_an_empty_or_gi_folder(tmp_path, tiny_dataset):
    assert FORMAT.detect(ebhi(tmp_path / "ebhi"))
    (tmp_path / "empty").mkdir()
    assert not FORMAT.detect(tmp_path / "empty")
    assert not FORMAT.detect(tiny_dataset(train=[(1, 0, 16, 16, 2)]).root)


def test_describe_reads_name_channels_and_the_category_stratum(tmp_path):
    d = FORMAT.describe(ebhi(tmp_path / "EBHI-SEG"))
    assert (d.name, d.format, d.dims, d.channels, d.labels) == ("EBHI-SEG", "ebhi", "2d", ("R", "G", "B"), ("foreground",))
    assert (d.encoding, d.metric, d.submission, d.file_ending) == ("binary", "dice", "label_images", ".png")
    assert (d.group_key, d.stratify_key) == (None, "category")


def test_describe_reads_gray_images_as_one_channel(tmp_path):
    write_png(tmp_path / "A" / "image" / "x.png", rgb(0)[..., 0])
    write_png(tmp_path / "A" / "label" / "x.png", mask(0))
    assert FORMAT.describe(tmp_path).channels == ("gray",)


def test_describe_of_no_labelled_image_is_an_error(tmp_path):
    write_png(tmp_path / "A" / "image" / "x.png", rgb(0))
    (tmp_path / "A" / "label").mkdir()
    fault(FORMAT.describe, tmp_path, names=tmp_path, says="no image with a label")


# ---- samples ------------------------------------------------------------------------------------

def test_samples_read_categories_from_the_folders_and_report_unlabelled(tmp_path):
    root = ebhi(tmp_path, {"Serrated adenoma": 2, "High-grade IN": 1})
    write_png(root / "High-grade IN" / "image" / "lonely.png", rgb(7))
    (root / "High-grade IN" / "label" / "notes.txt").write_text("not an image")
    found = FORMAT.samples(root, "train")
    assert [s.id for s in found.samples] == ["High-grade IN/img0", "Serrated adenoma/img0", "Serrated adenoma/img1"]
    assert [s.stratum for s in found.samples] == ["High-grade IN", "Serrated adenoma", "Serrated adenoma"]
    assert all(s.group == s.id for s in found.samples)
    s = found.samples[1]
    assert s.images == (root / "Serrated adenoma" / "image" / "img0.png",)
    assert s.label == root / "Serrated adenoma" / "label" / "img0.png"
    assert found.unlabelled == [root / "High-grade IN" / "image" / "lonely.png"]
    assert found.report().startswith("1 image(s) without a label skipped (first: ") and "lonely.png" in found.report()


def test_there_is_no_test_split(tmp_path):
    assert FORMAT.samples(ebhi(tmp_path), "test").samples == []


def test_a_label_without_an_image_is_an_error(tmp_path):
    root = ebhi(tmp_path)
    orphan = write_png(root / "Polyp" / "label" / "ghost.png", mask(0))
    fault(FORMAT.samples, root, "train", names=orphan, says="label without an image")


@pytest.mark.parametrize("other", ["img0.PNG", "img0.tif"])
def test_two_images_with_one_name_are_an_error(tmp_path, other):
    root = ebhi(tmp_path)
    write_png(root / "Polyp" / "image" / other, rgb(3))
    fault(FORMAT.samples, root, "train", names="img0", says="a second image named 'img0'")


def test_a_link_out_of_the_dataset_is_an_error(tmp_path):
    root = ebhi(tmp_path / "data")
    outside = write_png(tmp_path / "outside.png", rgb(5))
    link = root / "Polyp" / "image" / "img9.png"
    link.symlink_to(outside)
    fault(FORMAT.samples, root, "train", names=link, says="a link pointing outside")


def test_a_fifo_named_like_an_image_is_an_error(tmp_path):
    root = ebhi(tmp_path)
    fifo = root / "Polyp" / "label" / "img0.png"
    fifo.unlink()
    os.mkfifo(fifo)
    fault(FORMAT.samples, root, "train", names=fifo, says="not a regular file (a FIFO)")


# ---- pixels -------------------------------------------------------------------------------------

def test_image_and_label_are_read_as_written(tmp_path):
    sample, d = first(ebhi(tmp_path))
    image = FORMAT.read_image(sample, d)
    assert image.dtype == np.uint8 and np.array_equal(image, np.asarray(Image.open(sample.images[0])))
    label = FORMAT.read_label(sample, d)
    assert label.dtype == np.uint8 and np.array_equal(label, mask(0) // 255)


@pytest.mark.parametrize("saved", ["0/1", "rgb"])
def test_labels_saved_as_0_1_or_equal_rgb_are_read(tmp_path, saved):
    root = ebhi(tmp_path)
    sample, d = first(root)
    write_png(sample.label, mask(0) // 255 if saved == "0/1" else np.repeat(mask(0)[..., None], 3, axis=2))
    assert np.array_equal(FORMAT.read_label(sample, d), mask(0) // 255)


def test_a_label_of_another_size_is_an_error(tmp_path):
    sample, d = first(ebhi(tmp_path))
    write_png(sample.label, mask(0, size=SIZE + 2))
    message = fault(FORMAT.read_label, sample, d, names=sample.label, says="18x18 (HxW) pixels but")
    assert str(sample.images[0]) in message


@pytest.mark.parametrize("values", [(0, 128), (0, 1, 255)])
def test_label_values_outside_the_encoding_are_an_error(tmp_path, values):
    sample, d = first(ebhi(tmp_path))
    write_png(sample.label, np.resize(np.array(values, np.uint8), (SIZE, SIZE)))
    fault(FORMAT.read_label, sample, d, names=sample.label, says=f"label values {values[-1]} outside 0..1 (or 0/255)")


def test_an_rgb_label_of_differing_channels_is_an_error(tmp_path):
    sample, d = first(ebhi(tmp_path))
    write_png(sample.label, rgb(1))
    fault(FORMAT.read_label, sample, d, names=sample.label, says="an RGB label where a map is expected")


def test_an_image_of_another_channel_count_is_an_error(tmp_path):
    sample, d = first(ebhi(tmp_path))
    write_png(sample.images[0], rgb(1)[..., 0])
    fault(FORMAT.read_image, sample, d, names=sample.images[0], says="image of 1 channel(s), expected 3")


@pytest.mark.parametrize("keep", ["half", "all but the end chunk"])
@pytest.mark.parametrize("which", ["image", "label"])
def test_a_truncated_png_is_an_error(tmp_path, which, keep):
    sample, d = first(ebhi(tmp_path))
    path = sample.images[0] if which == "image" else sample.label
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if keep == "half" else data[:-12])
    read = FORMAT.read_image if which == "image" else FORMAT.read_label
    fault(read, sample, d, names=path, says="unreadable or truncated image")

"""Reader of the nnU-Net v2 raw format, 2D (src.data.formats.nnunet): detection, description, samples,
pixels and every fault."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.data.formats.nnunet import FORMAT
from tests.expect import fault

SIZE = 16
LABELS = {"background": 0, "liver": 1, "tumour": 2}


def write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **({"quality": 100} if path.suffix == ".jpg" else {}))
    return path


def channel(seed: int, dtype=np.uint8, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, (size, size)).astype(dtype)


def label_map(seed: int, k: int = 2, size: int = SIZE) -> np.ndarray:
    return (np.arange(size * size).reshape(size, size) + seed) % (k + 1)


def write_json(root: Path, **changes) -> Path:
    """dataset.json of two channels and LABELS for two training cases, with `changes` (None drops a key)."""
    data = {"name": "Demo", "channel_names": {"0": "R", "1": "G"}, "labels": LABELS, "numTraining": 2,
            "file_ending": ".png", **changes}
    path = root / "dataset.json"
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    return path


def nnunet(root: Path, train=("case_a", "case_b"), test=("case_t",), n_channels: int = 2, ending: str = ".png",
           k: int = 2, dtype=np.uint8, **changes) -> Path:
    """An nnU-Net raw dataset under `root`: `n_channels` files per case, labels 0..k."""
    root.mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(train):
        for c in range(n_channels):
            write_image(root / "imagesTr" / f"{case}_{c:04d}{ending}", channel(10 * i + c, dtype))
        write_image(root / "labelsTr" / f"{case}{ending}", label_map(i, k).astype(np.uint8))
    for i, case in enumerate(test):
        for c in range(n_channels):
            write_image(root / "imagesTs" / f"{case}_{c:04d}{ending}", channel(100 + 10 * i + c, dtype))
    write_json(root, **{"file_ending": ending, "numTraining": len(train), **changes})
    return root



def first(root: Path):
    """The first train sample of `root` and the description."""
    return FORMAT.samples(root, "train").samples[0], FORMAT.describe(root)


# ---- detection and description ------------------------------------------------------------------

def test_detects_the_layout_but_not_an_empty_or_gi_folder(tmp_path, tiny_dataset):
    assert FORMAT.detect(nnunet(tmp_path / "Dataset001_Demo"))
    (tmp_path / "empty").mkdir()
    assert not FORMAT.detect(tmp_path / "empty")
    assert not FORMAT.detect(tiny_dataset(train=[(1, 0, 16, 16, 2)]).root)


def test_describe_reads_channels_and_labels_in_order(tmp_path):
    labels = {"tumour": 2, "background": 0, "liver": 1}
    d = FORMAT.describe(nnunet(tmp_path, labels=labels, channel_names={"1": "G", "0": "R"}))
    assert (d.name, d.format, d.dims, d.channels, d.labels) == ("Demo", "nnunet", "2d", ("R", "G"), ("liver", "tumour"))
    assert (d.encoding, d.metric, d.submission, d.file_ending) == ("index", "dice", "label_images", ".png")
    assert (d.group_key, d.stratify_key) == (None, None)


def test_describe_of_one_class_is_binary_and_named_after_the_folder(tmp_path):
    d = FORMAT.describe(nnunet(tmp_path / "Dataset002_Lung", k=1, name=None, labels={"background": 0, "lung": 1}))
    assert (d.name, d.labels, d.encoding) == ("Dataset002_Lung", ("lung",), "binary")


# ---- dataset.json faults ------------------------------------------------------------------------

@pytest.mark.parametrize("changes, says", [
    ({"labels": None, "numTraining": None}, "missing key(s) labels, numTraining"),
    ({"channel_names": {"0": "R", "2": "G"}}, "channel_names must map \"0\"..\"N-1\" to names"),
    ({"channel_names": {"0": "R", "1": ""}}, "channels must be a non-empty list of names"),
    ({"labels": {"background": 0, "liver": 1, "tumour": [1, 2]}}, "region-based labels ('tumour'"),
    ({"labels": {"background": 0, "liver": 1, "tumour": 3}}, "label values [1, 3] are not 1..K consecutive"),
    ({"labels": {"liver": 1}}, "labels must map \"background\" to 0"),
    ({"numTraining": "2"}, "numTraining must be a count"),
    ({"file_ending": ".nii.gz"}, "3D NIfTI is not supported yet"),
    ({"file_ending": ".bmp"}, "file_ending '.bmp' is not one of"),
])
def test_a_bad_dataset_json_is_an_error(tmp_path, changes, says):
    root = nnunet(tmp_path, **changes)
    fault(FORMAT.describe, root, names=root / "dataset.json", says=says)


def test_a_malformed_dataset_json_is_an_error(tmp_path):
    root = nnunet(tmp_path)
    (root / "dataset.json").write_text('{"labels": ')
    fault(FORMAT.describe, root, names=root / "dataset.json", says="unreadable dataset.json")


@pytest.mark.parametrize("n_files, n_named, culprit, says", [
    (3, 2, "imagesTr/case_a_0002.png", "channel 0002 but"),
    (1, 2, "imagesTr/case_a_0001.png", "channel file missing"),
])
def test_a_channel_count_disagreeing_with_the_files_is_an_error(tmp_path, n_files, n_named, culprit, says):
    names = {str(i): f"c{i}" for i in range(n_named)}
    root = nnunet(tmp_path, n_channels=n_files, channel_names=names)
    message = fault(FORMAT.samples, root, "train", names=root / culprit, says=says)
    assert f"{root / 'dataset.json'} names 2 channel(s)" in message


def test_num_training_disagreeing_with_the_cases_is_an_error(tmp_path):
    root = nnunet(tmp_path)
    write_json(root, numTraining=3)
    fault(FORMAT.samples, root, "train", names=root / "dataset.json", says="numTraining 3 but imagesTr and labelsTr hold 2")


# ---- samples ------------------------------------------------------------------------------------

def test_samples_of_train_and_test(tmp_path):
    root = nnunet(tmp_path)
    train = FORMAT.samples(root, "train")
    assert [s.id for s in train.samples] == ["case_a", "case_b"] and train.unlabelled == []
    s = train.samples[1]
    assert s.images == (root / "imagesTr" / "case_b_0000.png", root / "imagesTr" / "case_b_0001.png")
    assert (s.label, s.group, s.stratum) == (root / "labelsTr" / "case_b.png", "case_b", "")
    test = FORMAT.samples(root, "test").samples
    assert [(s.id, s.label) for s in test] == [("case_t", None)]
    assert test[0].images == (root / "imagesTs" / "case_t_0000.png", root / "imagesTs" / "case_t_0001.png")


def test_a_label_without_images_is_an_error(tmp_path):
    root = nnunet(tmp_path)
    orphan = write_image(root / "labelsTr" / "case_z.png", label_map(0).astype(np.uint8))
    fault(FORMAT.samples, root, "train", names=orphan, says="label without images")


def test_images_without_a_label_are_an_error(tmp_path):
    root = nnunet(tmp_path)
    (root / "labelsTr" / "case_b.png").unlink()
    fault(FORMAT.samples, root, "train", names=root / "imagesTr" / "case_b_0000.png", says="image without a label")


def test_two_images_with_one_name_are_an_error(tmp_path):
    root = nnunet(tmp_path)
    write_image(root / "imagesTr" / "case_a_0001.tif", channel(0))
    fault(FORMAT.samples, root, "train", names="imagesTr/case_a_0001", says="a second image named 'case_a_0001'")


@pytest.mark.parametrize("culprit", ["imagesTr/case_c_0000.tif", "imagesTr/case_c.png", "labelsTr/case_a.tif"])
def test_a_misnamed_file_is_an_error(tmp_path, culprit):
    root = nnunet(tmp_path)
    if culprit.startswith("labelsTr"):
        (root / "labelsTr" / "case_a.png").unlink()
    path = write_image(root / culprit, channel(0))
    fault(FORMAT.samples, root, "train", names=path, says="ending is not" if path.suffix == ".tif" else "is not <case>_<XXXX>")


# ---- pixels -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ending, dtype", [(".png", np.uint8), (".png", np.uint16), (".tif", np.uint16)])
def test_channels_are_stacked_and_their_dtype_kept(tmp_path, ending, dtype):
    sample, d = first(nnunet(tmp_path, ending=ending, dtype=dtype))
    image = FORMAT.read_image(sample, d)
    assert image.dtype == dtype and image.shape == (SIZE, SIZE, 2)
    assert np.array_equal(image, np.stack([channel(0, dtype), channel(1, dtype)], axis=2))


def test_the_label_is_read_as_an_index_map(tmp_path):
    sample, d = first(nnunet(tmp_path))
    label = FORMAT.read_label(sample, d)
    assert label.dtype == np.uint8 and np.array_equal(label, label_map(0))


def test_an_rgb_channel_file_is_an_error(tmp_path):
    sample, d = first(nnunet(tmp_path))
    write_image(sample.images[1], np.zeros((SIZE, SIZE, 3), np.uint8))
    fault(FORMAT.read_image, sample, d, names=sample.images[1], says="image of 3 channel(s), expected 1")


def test_channel_files_of_different_sizes_are_an_error(tmp_path):
    sample, d = first(nnunet(tmp_path))
    write_image(sample.images[1], channel(0, size=SIZE + 4))
    message = fault(FORMAT.read_image, sample, d, names=sample.images[1], says="20x20 (HxW) pixels but")
    assert str(sample.images[0]) in message


def test_a_label_of_another_size_is_an_error(tmp_path):
    sample, d = first(nnunet(tmp_path))
    write_image(sample.label, label_map(0, size=SIZE - 2).astype(np.uint8))
    message = fault(FORMAT.read_label, sample, d, names=sample.label, says="14x14 (HxW) pixels but")
    assert str(sample.images[0]) in message


def test_label_values_outside_0_to_k_are_an_error(tmp_path):
    sample, d = first(nnunet(tmp_path))
    write_image(sample.label, label_map(0, k=1).astype(np.uint8) * 255)
    fault(FORMAT.read_label, sample, d, names=sample.label, says="label values 255 outside 0..2")


def test_an_rgb_label_is_an_error(tmp_path):
    sample, d = first(nnunet(tmp_path))
    write_image(sample.label, np.repeat(label_map(0).astype(np.uint8)[..., None], 3, axis=2))
    fault(FORMAT.read_label, sample, d, names=sample.label, says="an RGB label where a map is expected")


@pytest.mark.parametrize("ending", [".png", ".jpg", ".tif"])
def test_a_truncated_channel_file_is_an_error(tmp_path, ending):
    sample, d = first(nnunet(tmp_path, ending=ending))
    data = sample.images[1].read_bytes()
    sample.images[1].write_bytes(data[:len(data) // 2])
    fault(FORMAT.read_image, sample, d, names=sample.images[1], says="unreadable or truncated image")


def test_a_truncated_label_is_an_error(tmp_path):
    sample, d = first(nnunet(tmp_path))
    data = sample.label.read_bytes()
    sample.label.write_bytes(data[:-4])
    fault(FORMAT.read_label, sample, d, names=sample.label, says="unreadable or truncated image")

"""Synthetic 2D datasets (src.data.synthetic2d, src.make_synthetic --format): the real layouts on disk,
labels that match their text forms, the traits of each set, determinism, the command line."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from src.core.errors import DataError, run_cli
from src.data import rle
from src.data.synthetic2d import generate_dataset
from src.data.synthetic2d.ebhi import CATEGORIES, category_counts
from src.make_synthetic import main

TINY = {"carvana": dict(cars=3, test_cars=1, views=4, size=(96, 64), seed=5),
        "ebhi": dict(images=14, unlabelled=1, size=(64, 48), seed=5),
        "nnunet": dict(cases=4, test_cases=2, channels=2, classes=3, size=(64, 56), seed=5)}
CAR_IMAGE = re.compile(r"^[0-9a-f]{12}_\d\d\.jpg$")


def make(root: Path, fmt: str, name: str | None = None, **overrides):
    return generate_dataset(fmt, root / (name or fmt), **{**TINY[fmt], **overrides})


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """format -> (dataset folder, summary), one tiny set each."""
    root = tmp_path_factory.mktemp("synth2d")
    return {fmt: (root / fmt, make(root, fmt)) for fmt in TINY}


# ---- carvana ------------------------------------------------------------------------------------

def test_carvana_layout_and_csvs(made):
    root, summary = made["carvana"]
    train, test = sorted(p.name for p in (root / "train").iterdir()), sorted(p.name for p in (root / "test").iterdir())
    assert len(train) == 12 == summary.train and len(test) == 4 == summary.test
    assert all(CAR_IMAGE.match(n) for n in train + test)
    cars = {n[:12] for n in train}
    assert len(cars) == 3 and not cars & {n[:12] for n in test}
    assert sorted({n[13:15] for n in train}) == ["01", "02", "03", "04"]
    assert sorted(p.name for p in (root / "train_masks").iterdir()) == [n.replace(".jpg", "_mask.gif") for n in train]
    with Image.open(root / "train" / train[0]) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (96, 64))
    with Image.open(root / "train_masks" / f"{train[0][:-4]}_mask.gif") as mask:
        assert mask.format == "GIF" and mask.mode in ("P", "L") and mask.size == (96, 64)
    masks = pd.read_csv(root / "train_masks.csv", dtype=str, keep_default_na=False)
    assert list(masks.columns) == ["img", "rle_mask"] and masks["img"].tolist() == train
    for img, text in zip(masks["img"], masks["rle_mask"]):
        gif = load(root / "train_masks" / img.replace(".jpg", "_mask.gif"))
        assert gif.dtype == np.uint8 and set(np.unique(gif)) == {0, 1}
        assert np.array_equal(rle.decode(text, gif.shape), gif)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    assert sample["img"].tolist() == test and (sample["rle_mask"] == "1 1").all()
    truth = pd.read_csv(summary.truth_path, dtype=str)
    assert Path(summary.truth_path) == root.parent / "carvana_test_truth.csv"
    assert truth["img"].tolist() == test and all(rle.decode(t, (64, 96)).sum() > 200 for t in truth["rle_mask"])
    meta = pd.read_csv(root / "metadata.csv", dtype=str)
    assert list(meta.columns) == ["id", "year", "make", "model", "trim1", "trim2"]
    assert sorted(meta["id"]) == sorted(cars | {n[:12] for n in test})


def test_carvana_views_of_a_car_alike_and_cars_distinct(made):
    root, _ = made["carvana"]
    colours: dict[str, list[np.ndarray]] = {}
    for path in sorted((root / "train").iterdir()):
        mask = load(root / "train_masks" / f"{path.stem}_mask.gif").astype(bool)
        assert 0.05 < mask.mean() < 0.5
        colours.setdefault(path.name[:12], []).append(load(path)[mask].mean(axis=0))
    spread = max(np.ptp(np.stack(c), axis=0).max() for c in colours.values())
    means = [np.mean(c, axis=0) for c in colours.values()]
    apart = min(np.abs(a - b).max() for i, a in enumerate(means) for b in means[i + 1:])
    assert spread < 10 and apart > 3 * spread


# ---- ebhi ---------------------------------------------------------------------------------------

def test_ebhi_layout_unequal_categories_and_one_unlabelled(made):
    root, summary = made["ebhi"]
    assert sorted(p.name for p in root.iterdir()) == sorted(CATEGORIES)
    assert "High-grade IN" in CATEGORIES and "Serrated adenoma" in CATEGORIES
    counts = {c: len(list((root / c / "image").iterdir())) for c in CATEGORIES}
    assert counts == category_counts(14) and sum(counts.values()) == 14 and min(counts.values()) >= 2
    assert list(category_counts(60).values()) == [21, 5, 17, 2, 13, 2]
    missing = [p for c in CATEGORIES for p in (root / c / "image").iterdir() if not (root / c / "label" / p.name).exists()]
    assert len(missing) == 1 == summary.unlabelled and summary.train == 13
    labels = [p for c in CATEGORIES for p in (root / c / "label").glob("*.png")]
    assert len(labels) == 13
    for path in labels:
        with Image.open(path.parent.parent / "image" / path.name) as image:
            assert (image.mode, image.size) == ("RGB", (64, 48))
        label = load(path)
        assert label.shape == (48, 64) and label.dtype == np.uint8 and set(np.unique(label)) <= {0, 255}
    assert np.mean([load(p).mean() > 0 for p in labels]) > 0.8


def test_ebhi_glands_differ_in_hue_from_stroma(made):
    root, _ = made["ebhi"]
    for path in list((root / "Polyp" / "label").iterdir())[:2]:
        label, image = load(path) > 0, load(path.parent.parent / "image" / path.name).astype(float)
        if label.any() and (~label).any():
            gland, stroma = image[label].mean(axis=0), image[~label].mean(axis=0)
            assert stroma[1] - gland[1] > 25  # less green: purple glands on pink stroma


# ---- nnunet -------------------------------------------------------------------------------------

def test_nnunet_dataset_json_matches_files(made):
    root, summary = made["nnunet"]
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["file_ending"] == ".png" and meta["numTraining"] == 4 == summary.train
    assert meta["channel_names"] == {"0": "T1", "1": "T2"}
    assert meta["labels"] == {"background": 0, "ellipse": 1, "rectangle": 2, "triangle": 3}
    cases = sorted(p.stem for p in (root / "labelsTr").iterdir())
    assert len(cases) == meta["numTraining"]
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == [f"{c}_{k:04d}.png" for c in cases for k in range(2)]
    test_cases = sorted(p.stem for p in Path(summary.truth_path).iterdir())
    assert Path(summary.truth_path) == root.parent / "nnunet_test_truth" and len(test_cases) == 2
    assert not set(test_cases) & set(cases)
    assert sorted(p.name for p in (root / "imagesTs").iterdir()) == [f"{c}_{k:04d}.png" for c in test_cases for k in range(2)]
    seen = set()
    for case in cases:
        label = load(root / "labelsTr" / f"{case}.png")
        assert label.dtype == np.uint8 and label.shape == (56, 64)
        seen |= set(np.unique(label).tolist())
        for k in range(2):
            with Image.open(root / "imagesTr" / f"{case}_{k:04d}.png") as image:
                assert (image.mode, image.size) == ("L", (64, 56))
    assert seen <= {0, 1, 2, 3} and len(seen) >= 3


def test_nnunet_channels_tell_the_classes_apart(made):
    root, _ = made["nnunet"]
    for label_path in (root / "labelsTr").iterdir():
        label = load(label_path)
        images = np.stack([load(root / "imagesTr" / f"{label_path.stem}_{k:04d}.png") for k in range(2)], -1).astype(float)
        means = {k: images[label == k].mean(axis=0) for k in np.unique(label)}
        for a in means:
            for b in means:
                if a < b:
                    assert np.abs(means[a] - means[b]).max() > 25


# ---- all formats --------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(TINY))
def test_same_bytes_for_same_seed_other_bytes_for_another(tmp_path, fmt):
    a, b = make(tmp_path, fmt, f"a/{fmt}"), make(tmp_path, fmt, f"b/{fmt}")  # one folder name: nnunet's json names it
    assert file_hashes(tmp_path / "a" / fmt) == file_hashes(tmp_path / "b" / fmt)
    if a.truth_path:
        truth_a, truth_b = Path(a.truth_path), Path(b.truth_path)
        assert (truth_a.read_bytes() == truth_b.read_bytes() if truth_a.is_file()
                else file_hashes(truth_a) == file_hashes(truth_b))
    make(tmp_path, fmt, f"c/{fmt}", seed=6)
    assert file_hashes(tmp_path / "a" / fmt) != file_hashes(tmp_path / "c" / fmt)


@pytest.mark.parametrize("fmt", list(TINY))
def test_refuses_non_empty_out_unless_overwrite(tmp_path, fmt):
    out = tmp_path / fmt
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="--overwrite"):
        make(tmp_path, fmt)
    assert (out / "keep.txt").exists()
    make(tmp_path, fmt, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary siblings left


@pytest.mark.parametrize("options, match", [
    (dict(size=(16, 64)), "--size"), (dict(views=0), "--views"), (dict(cars=0), "--cars"),
    (dict(seed=-1), "--seed"), (dict(slices=[12]), "--slices does not apply to --format carvana")])
def test_bad_carvana_options_are_errors(tmp_path, options, match):
    with pytest.raises(DataError, match=match):
        make(tmp_path, "carvana", **options)
    assert not (tmp_path / "carvana").exists()


@pytest.mark.parametrize("fmt, options, match", [
    ("ebhi", dict(images=11), "--images"), ("ebhi", dict(unlabelled=14), "--unlabelled"),
    ("ebhi", dict(truth_out="t.csv"), "--truth-out does not apply"),
    ("nnunet", dict(channels=5), "--channels 5: at most 4"), ("nnunet", dict(classes=0), "--classes")])
def test_bad_2d_options_are_errors(tmp_path, fmt, options, match):
    with pytest.raises(DataError, match=match):
        make(tmp_path, fmt, **options)


@pytest.mark.parametrize("fmt, argv", [
    ("carvana", ["--cars", "2", "--test-cars", "1", "--views", "2", "--size", "96x64"]),
    ("ebhi", ["--images", "12", "--unlabelled", "2", "--size", "48x48"]),
    ("nnunet", ["--cases", "2", "--test-cases", "1", "--channels", "1", "--classes", "1", "--size", "48x48"])])
def test_cli_writes_each_format(tmp_path, capsys, fmt, argv):
    out = tmp_path / "data"
    assert main(["--format", fmt, "--out", str(out), "--seed", "2", *argv]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"wrote {out} ({fmt}, ") and line.count("\n") == 1
    assert any(out.iterdir())


@pytest.mark.parametrize("argv, flag", [
    (["--format", "carvana", "--slices", "12"], "--slices"), (["--format", "ebhi", "--cases", "3"], "--cases"),
    (["--format", "nnunet", "--cars", "3"], "--cars"), (["--cars", "3"], "--cars"),
    (["--format", "ebhi", "--size", "9by9"], "--size")])
def test_cli_option_of_another_format_is_one_line_error(tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit) as info:
        run_cli(main, ["--out", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith(f"error: {flag}") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()

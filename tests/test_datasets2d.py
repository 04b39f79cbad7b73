"""The dataset description, layout detection, the 2D image cache, 2D folds and the overlap metric."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from src.core.artifacts import description_path
from src.core.errors import DataError
from src.data.description import DatasetDescription, read_description
from src.data.folds import assign_sample_folds, make_folds
from src.data.formats import detect_format
from src.data.image_cache import ImageCache, entry_key
from src.data.preparation import prepare
from src.metrics.overlap import confusion, image_table, overlap_scores, summary
from tests.test_format_ebhi import ebhi, write_png
from tests.test_format_nnunet import nnunet

GI = dict(name="x", format="gi", dims="slices", channels=("mri",), labels=("a", "b"), encoding="overlapping",
          metric="gi_tract", submission="gi_csv", file_ending=".png", group_key="case")


# ---- the description ------------------------------------------------------------------------------

def test_description_round_trips_through_its_dict():
    description = DatasetDescription(**GI)
    assert DatasetDescription.from_dict(json.loads(json.dumps(description.to_dict())), "d.json") == description


@pytest.mark.parametrize("change, says", [
    ({"colour": "red"}, "unknown key(s) colour"),
    ({"metric": None}, "missing key(s) metric"),
    ({"encoding": "rle"}, "encoding 'rle' is not one of"),
    ({"encoding": "binary"}, "a binary encoding has one label"),
    ({"labels": ["a", "a"]}, "name one thing twice"),
    ({"channels": []}, "channels must be a non-empty list"),
    ({"version": 7}, "description version 7"),
])
def test_description_refuses_bad_values(change, says):
    data = {**DatasetDescription(**GI).to_dict(), **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(DataError, match="^d.json: .*" + says.replace("(", r"\(").replace(")", r"\)")):
        DatasetDescription.from_dict(data, "d.json")


# ---- detection ----------------------------------------------------------------------------------

def test_each_layout_is_detected(tmp_path, tiny_dataset):
    assert detect_format(tiny_dataset(train=[(1, 0, 16, 16, 2)]).root).name == "gi"
    assert detect_format(ebhi(tmp_path / "e")).name == "ebhi"
    assert detect_format(nnunet(tmp_path / "n")).name == "nnunet"


def test_an_unknown_layout_lists_the_known_formats(tmp_path):
    (tmp_path / "d" / "stuff").mkdir(parents=True)
    with pytest.raises(DataError) as info:
        detect_format(tmp_path / "d")
    message = str(info.value)
    assert "unknown dataset layout" in message and all(f"{n}:" in message for n in ("gi", "carvana", "ebhi", "nnunet"))


def test_a_forced_format_must_match_the_folder(tmp_path):
    with pytest.raises(DataError, match=r"not in the nnunet layout \(looked for"):
        detect_format(ebhi(tmp_path / "e"), forced="nnunet")
    with pytest.raises(DataError, match="unknown dataset format 'png'"):
        detect_format(tmp_path, forced="png")


# ---- the 2D cache -------------------------------------------------------------------------------

def test_prepare_caches_ebhi_and_writes_its_description(tmp_path):
    root = ebhi(tmp_path / "EBHI", {"Normal": 3, "Serrated adenoma": 2})
    write_png(root / "Normal" / "image" / "lonely.png", np.zeros((16, 16, 3), np.uint8))
    summary_ = prepare(root, tmp_path / "cache")
    assert (summary_.written, summary_.skipped, summary_.removed) == (5, 0, 0)
    assert "1 image(s) without a label skipped" in summary_.line() and "lonely.png" in summary_.line()
    description = read_description(tmp_path / "cache")
    assert (description.format, description.dims, description.stratify_key) == ("ebhi", "2d", "category")
    cache = ImageCache(tmp_path / "cache")
    table = cache.table()
    assert table["id"].tolist() == sorted(table["id"]) and len(table) == 5
    assert set(table["stratum"]) == {"Normal", "Serrated adenoma"}
    row = table[table["id"] == "Serrated adenoma/img1"].iloc[0]
    assert row["key"] == entry_key("Serrated adenoma/img1") and "/" not in row["key"] and " " not in row["key"]
    image, mask = cache.load(row["key"])
    assert image.shape == (16, 16, 3) and mask.shape == (16, 16) and set(np.unique(mask)) <= {0, 1} and mask.any()


def test_prepare_rewrites_only_changed_images_and_removes_vanished_ones(tmp_path):
    root = ebhi(tmp_path / "EBHI", {"Normal": 3})
    prepare(root, tmp_path / "cache")
    write_png(root / "Normal" / "label" / "img0.png", np.zeros((16, 16), np.uint8))
    (root / "Normal" / "image" / "img2.png").unlink()
    (root / "Normal" / "label" / "img2.png").unlink()
    again = prepare(root, tmp_path / "cache")
    assert (again.written, again.skipped, again.removed) == (1, 1, 1)
    cache = ImageCache(tmp_path / "cache")
    assert cache.table()["id"].tolist() == ["Normal/img0", "Normal/img1"]
    assert not cache.load(entry_key("Normal/img0"))[1].any()


def test_prepare_caches_every_channel_of_an_nnunet_dataset(tmp_path):
    prepare(nnunet(tmp_path / "Dataset001_Demo", n_channels=2, k=2), tmp_path / "cache", split="all")
    cache = ImageCache(tmp_path / "cache")
    assert cache.description.channels == ("R", "G") and cache.description.encoding == "index"
    image, mask = cache.load(cache.table()["key"].iloc[0])
    assert image.shape[2] == 2 and mask.max() <= 2


def test_a_bad_image_leaves_no_entry_and_names_the_file(tmp_path):
    root = ebhi(tmp_path / "EBHI", {"Normal": 2})
    label = root / "Normal" / "label" / "img1.png"
    write_png(label, np.zeros((8, 16), np.uint8))
    with pytest.raises(DataError, match=str(label)):
        prepare(root, tmp_path / "cache", workers=1)
    assert not (tmp_path / "cache" / "train" / "Normal_img1").exists()
    assert not description_path(tmp_path / "cache").exists()


def test_prepare_cli_forced_to_the_wrong_format_is_one_line(tmp_path):
    root = ebhi(tmp_path / "EBHI")
    done = subprocess.run([sys.executable, "-m", "src.prepare", "--data-dir", str(root), "--cache-dir",
                           str(tmp_path / "cache"), "--format", "carvana"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "not in the carvana layout" in done.stderr


# ---- 2D folds -----------------------------------------------------------------------------------

def test_sample_folds_keep_groups_together_and_spread_strata():
    table = pd.DataFrame({"id": [f"i{k:02d}" for k in range(40)], "group": [f"g{k // 4}" for k in range(40)],
                          "stratum": ["a" if k < 24 else "b" for k in range(40)]})
    folds = assign_sample_folds(table, n_folds=4, seed=1)
    assert folds.groupby("group")["fold"].nunique().max() == 1
    assert set(folds["fold"]) == {0, 1, 2, 3}
    assert folds.equals(assign_sample_folds(table.sample(frac=1, random_state=3), n_folds=4, seed=1))
    with pytest.raises(DataError, match="only 10 groups"):
        assign_sample_folds(table, n_folds=11)


def test_make_folds_on_ebhi_stratifies_by_category(tmp_path):
    root = ebhi(tmp_path / "EBHI", {"Normal": 8, "Polyp": 4})
    folds = make_folds(root, n_folds=4, seed=0)
    assert len(folds) == 12 and folds["id"].is_unique
    assert (pd.crosstab(folds["fold"], folds["stratum"])["Polyp"] == 1).all()
    with pytest.raises(DataError, match="excluded image Normal/nope is not in the data"):
        make_folds(root, n_folds=4, exclude=["Normal/nope"])


# ---- the overlap metric -------------------------------------------------------------------------

def test_confusion_counts_each_class():
    truth = np.array([[0, 1, 1], [2, 2, 0]])
    pred = np.array([[1, 1, 0], [2, 0, 0]])
    assert confusion(pred, truth, 2).tolist() == [[1, 1, 1], [1, 0, 1]]


def test_scores_follow_the_definitions_and_the_empty_conventions():
    counts = np.array([[3, 1, 2], [0, 0, 0], [0, 2, 0], [0, 0, 4]])
    s = overlap_scores(counts)
    assert s["dice"].tolist() == [6 / 9, 1.0, 0.0, 0.0]
    assert s["jaccard"].tolist() == [3 / 6, 1.0, 0.0, 0.0]
    assert s["precision"].tolist() == [3 / 4, 1.0, 0.0, 0.0]
    assert s["recall"].tolist() == [3 / 5, 1.0, 0.0, 0.0]


def test_summary_is_the_mean_over_images_overall_and_per_stratum():
    rng = np.random.default_rng(0)
    maps = [(f"i{k}", "ab"[k % 2], rng.integers(0, 2, (8, 8)), rng.integers(0, 2, (8, 8))) for k in range(6)]
    table = image_table(maps, ("fg",))
    result = summary(table).set_index("stratum")
    assert result.loc["all", "images"] == 6
    assert result.loc["all", "dice"] == pytest.approx(table["dice"].mean())
    assert result.loc["a", "jaccard"] == pytest.approx(table[table["stratum"] == "a"]["jaccard"].mean())


def test_prepare_removes_only_its_own_vanished_entries(tmp_path):
    root = ebhi(tmp_path / "EBHI", {"Normal": 2})
    notes = tmp_path / "cache" / "train" / "my_notes"
    notes.mkdir(parents=True)
    (notes / "todo.txt").write_text("keep me")
    summary_ = prepare(root, tmp_path / "cache")
    assert summary_.removed == 0 and (notes / "todo.txt").read_text() == "keep me"

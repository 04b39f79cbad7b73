"""2D scoring (src.metrics.scoring2d, python -m src.score on carvana, ebhi, nnunet) and the 2D submission
writers (src.data.formats.submission), on tiny synthetic sets."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from src import score
from src.core.errors import DataError, run_cli
from src.data import rle
from src.data.formats import detect_format
from src.data.formats.carvana import read_img_csv
from src.data.formats.submission import write_carvana_csv, write_label_image
from src.metrics.overlap import STATS, confusion, overlap_scores
from src.metrics.scoring2d import image_dataset, score_images
from tests.expect import tiny_sets

TINY = {"carvana": dict(cars=1, test_cars=1, views=3, size=(64, 48)),
        "ebhi": dict(images=12, unlabelled=1, size=(32, 32)),
        "nnunet": dict(cases=3, test_cases=3, channels=1, classes=2, size=(32, 40))}


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    return tiny_sets(tmp_path_factory.mktemp("sets"), TINY)


def _dataset(root: Path):
    fmt = detect_format(root)
    return fmt, fmt.describe(root)


def _labels(root: Path) -> dict:
    """id -> (sample, index map) of the data folder's train labels."""
    fmt, description = _dataset(root)
    return {s.id: (s, fmt.read_label(s, description)) for s in fmt.samples(root, "train").samples}


def _write_folder(root: Path, out: Path, maps: dict[str, np.ndarray]) -> Path:
    fmt = detect_format(root)
    for sid, index_map in maps.items():
        write_label_image(out, sid, index_map, ".png", fmt.label_scale)
    return out


def _run(args: list[str], capsys) -> str:
    assert score.main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def _cli_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        run_cli(score.main, [str(a) for a in args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


# ---- scoring -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", list(TINY))
def test_the_train_labels_against_themselves_score_one(sets, fmt, tmp_path):
    labels = _labels(sets[fmt])
    pred = _write_folder(sets[fmt], tmp_path / "pred", {sid: m for sid, (_, m) in labels.items()})
    result = score_images(*_dataset(sets[fmt]), sets[fmt], pred)
    assert result.split == "train" and (result.missing, result.ignored) == (0, 0)
    assert sorted(result.table["id"].unique()) == sorted(labels)
    assert (result.table[list(STATS)] == 1.0).all().all() and (result.summary[list(STATS)] == 1.0).all().all()


def test_an_emptied_and_a_missing_prediction_score_as_by_hand(sets, tmp_path):
    root = sets["ebhi"]
    labels = _labels(root)
    ids = sorted(sid for sid, (_, m) in labels.items() if m.any())
    emptied, dropped = ids[0], ids[1]
    maps = {sid: (np.zeros_like(m) if sid == emptied else m) for sid, (_, m) in labels.items() if sid != dropped}
    result = score_images(*_dataset(root), root, _write_folder(root, tmp_path / "pred", maps))
    assert (result.missing, result.ignored) == (1, 0)
    expected = {sid: overlap_scores(confusion(maps.get(sid, np.zeros_like(m)), m, 1)) for sid, (_, m) in labels.items()}
    for stat in STATS:
        by_id = result.table.set_index("id")[stat]
        assert by_id.to_dict() == pytest.approx({sid: float(v[stat][0]) for sid, v in expected.items()})
        assert result.summary[stat].iloc[0] == pytest.approx(np.mean([v[stat][0] for v in expected.values()]))
    assert by_id[emptied] == 0.0 and by_id[dropped] == 0.0
    stratum = labels[emptied][0].stratum
    row = result.summary.set_index("stratum").loc[stratum]
    in_stratum = [sid for sid, (s, _) in labels.items() if s.stratum == stratum]
    assert row["images"] == len(in_stratum)
    assert row["dice"] == pytest.approx(np.mean([expected[sid]["dice"][0] for sid in in_stratum]))


def test_a_prediction_of_the_wrong_size_is_an_error_naming_it(sets, tmp_path):
    root = sets["nnunet"]
    (sid, (_, m)), *_ = _labels(root).items()
    path = _write_folder(root, tmp_path / "pred", {sid: np.zeros((m.shape[0] + 1, m.shape[1]), np.uint8)})
    with pytest.raises(DataError, match=re.escape(str(path / f"{sid}.png"))):
        score_images(*_dataset(root), root, path)


def test_a_prediction_naming_no_image_is_an_error_one_without_truth_is_ignored(sets, tmp_path):
    root = sets["nnunet"]
    labels = _labels(root)
    maps = {sid: m for sid, (_, m) in labels.items()}
    pred = _write_folder(root, tmp_path / "pred", {**maps, "case_999": next(iter(maps.values()))})
    with pytest.raises(DataError, match=r"pred: id case_999 has no image in .* \(train\)"):
        score_images(*_dataset(root), root, pred)
    truth = _write_folder(root, tmp_path / "truth", dict(list(maps.items())[:1]))
    (pred / "case_999.png").unlink()
    result = score_images(*_dataset(root), root, pred, truth)
    assert (result.missing, result.ignored, len(result.table["id"].unique())) == (0, len(maps) - 1, 1)


def test_gi_data_is_not_a_2d_dataset(tiny_dataset):
    assert image_dataset(tiny_dataset().root) is None


# ---- writers -----------------------------------------------------------------------------------------------
def _test_masks(root: Path) -> dict[str, np.ndarray]:
    truth = read_img_csv(root.parent / f"{root.name}_test_truth.csv")
    size = TINY["carvana"]["size"][::-1]
    return {img: rle.decode(text, size) for img, text in zip(truth["img"], truth["rle_mask"])}


def test_carvana_csv_round_trip(sets, tmp_path):
    root = sets["carvana"]
    masks = _test_masks(root)
    out = tmp_path / "sub.csv"
    assert write_carvana_csv(out, iter(masks.items()), root / "sample_submission.csv") == len(masks)
    written = read_img_csv(out)
    assert list(written.columns) == ["img", "rle_mask"]
    for img, text in zip(written["img"], written["rle_mask"]):
        assert np.array_equal(rle.decode(text, masks[img].shape), masks[img])
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


@pytest.mark.parametrize("change,says", [
    ("missing", r"sample_submission.csv: img '\w+_03.jpg' has no row in .*sub.csv \(1 missing\)"),
    ("extra", r"sample_submission.csv: has no img 'abc_01.jpg'"),
    ("twice", r"sub.csv: img '\w+_01.jpg' written twice"),
])
def test_carvana_csv_must_match_the_sample_and_leaves_nothing(sets, tmp_path, change, says):
    root = sets["carvana"]
    rows = sorted(_test_masks(root).items())
    rows = {"missing": rows[:-1], "extra": rows + [("abc_01.jpg", rows[0][1])], "twice": rows + rows[:1]}[change]
    with pytest.raises(DataError, match=says):
        write_carvana_csv(tmp_path / "sub.csv", iter(rows), root / "sample_submission.csv")
    assert list(tmp_path.iterdir()) == []


def test_label_images_go_into_subfolders_in_the_dataset_encoding(tmp_path):
    index_map = np.array([[0, 1], [1, 0]], np.uint8)
    path = write_label_image(tmp_path, "Polyp/GT1-001", index_map, ".png", scale=255)
    assert path == tmp_path / "Polyp" / "GT1-001.png"
    with Image.open(path) as image:
        assert image.mode == "L" and np.array_equal(np.asarray(image), index_map * 255)
    assert sorted(p.name for p in (tmp_path / "Polyp").iterdir()) == ["GT1-001.png"]  # no temporary left


@pytest.mark.parametrize("sid", ["../x", "a/../../x", "/abs", "a//b", "./x", "a\\b"])
def test_label_image_ids_leading_elsewhere_are_refused(tmp_path, sid):
    with pytest.raises(DataError, match="sample id"):
        write_label_image(tmp_path / "out", sid, np.zeros((2, 2), np.uint8), ".png")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_label_image_values_must_fit_8_bits(tmp_path):
    with pytest.raises(DataError, match="do not fit 8 bits"):
        write_label_image(tmp_path, "a", np.full((2, 2), 2), ".png", scale=255)


# ---- the command line --------------------------------------------------------------------------------------
def test_cli_ebhi_label_images_against_the_data_folder_per_category(sets, tmp_path, capsys):
    root = sets["ebhi"]
    labels = _labels(root)
    pred = _write_folder(root, tmp_path / "oof", {sid: m for sid, (_, m) in labels.items()})
    out = _run(["--data-dir", root, "--pred", pred, "--per-image", tmp_path / "table.csv"], capsys)
    categories = sorted({s.stratum for s, _ in labels.values()})
    lines = out.splitlines()
    assert lines[0].split() == ["stratum", "images", *STATS]
    assert [line.split()[0] for line in lines[1:2]] == ["all"]
    for category in categories:
        assert any(line.strip().startswith(category) for line in lines[2:]), category
    assert "0 truth image(s) without a prediction" in lines[-1]
    table = pd.read_csv(tmp_path / "table.csv", keep_default_na=False)
    assert sorted(table["id"]) == sorted(labels) and set(table["stratum"]) == set(categories)


def test_cli_nnunet_folder_against_the_test_truth_folder(sets, tmp_path, capsys):
    root = sets["nnunet"]
    truth = root.parent / f"{root.name}_test_truth"
    pred = tmp_path / "pred"
    shutil.copytree(truth, pred)
    (next(pred.iterdir())).unlink()
    record = json.loads(_run(["--data-dir", root, "--pred", pred, "--truth", truth, "--json",
                              "--summary", tmp_path / "s.json"], capsys))
    assert record["split"] == "test" and record["missing_predictions"] == 1
    assert record["n_images"] == TINY["nnunet"]["test_cases"] and record["dice"] < 1.0
    assert json.loads((tmp_path / "s.json").read_text()) == record


def test_cli_carvana_csv_against_the_truth_csv(sets, tmp_path, capsys):
    root = sets["carvana"]
    truth = root.parent / f"{root.name}_test_truth.csv"
    record = json.loads(_run(["--data-dir", root, "--pred", truth, "--truth", truth, "--json"], capsys))
    assert record["split"] == "test" and record["dice"] == 1.0 and record["n_images"] == TINY["carvana"]["views"]
    masks = _test_masks(root)
    first = sorted(masks)[0]
    write_carvana_csv(tmp_path / "sub.csv", ((img, np.zeros_like(m) if img == first else m) for img, m in masks.items()),
                      root / "sample_submission.csv")
    record = json.loads(_run(["--data-dir", root, "--pred", tmp_path / "sub.csv", "--truth", truth, "--json"], capsys))
    assert record["dice"] == pytest.approx((len(masks) - 1) / len(masks))


def test_cli_wrong_size_and_wrong_flags_are_one_line(sets, tmp_path, capsys):
    root = sets["ebhi"]
    sid = next(iter(_labels(root)))
    pred = _write_folder(root, tmp_path / "pred", {sid: np.zeros((5, 5), np.uint8)})
    assert str(pred / f"{sid}.png") in _cli_error(["--data-dir", root, "--pred", pred], capsys)
    assert "--per-case-day: applies to the GI data only" in _cli_error(
        ["--data-dir", root, "--pred", pred, "--per-case-day", tmp_path / "t.csv"], capsys)
    assert "neither a folder of label images nor a .csv file" in _cli_error(
        ["--data-dir", root, "--pred", next(pred.rglob("*.png"))], capsys)

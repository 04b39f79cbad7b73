"""The score stage on a tiny Kaggle-layout dataset (the `tiny_dataset` fixture of conftest.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from src import score
from src.core.errors import DataError, run_cli
from src.data import rle
from src.data.layout import CLASSES, slice_id
from src.metrics.competition import dice_rows, hausdorff_naive
from src.metrics.scoring import score_submission


def _rows(masks: dict[str, np.ndarray]) -> pd.DataFrame:
    """Submission rows (id, class, predicted) of uint8 (Z, 3, H, W) volumes keyed by case-day."""
    rows = [(slice_id(cd, z + 1), cls, rle.encode(vol[z, c]))
            for cd, vol in masks.items() for z in range(len(vol)) for c, cls in enumerate(CLASSES)]
    return pd.DataFrame(rows, columns=["id", "class", "predicted"])


def _write(df: pd.DataFrame, path) -> str:
    df.to_csv(path, index=False)
    return str(path)


def _expected(pred: dict, truth: dict, column_major: bool = False, oversize_rule: bool = False) -> float:
    """The metric from its definition, with the naive Hausdorff; column_major decodes as mle-bench."""
    dice, haus = [], []
    for cd, t in truth.items():
        p = pred.get(cd, np.zeros_like(t))
        if column_major:  # re-read the C-order RLE of every (H, W) slice as mle-bench does
            p, t = (np.array([[rle.decode(rle.encode(m), m.shape[::-1]).T for m in s] for s in v]) for v in (p, t))
        dice.append(dice_rows(p, t).ravel())
        p3, t3 = p.any(1), t.any(1)
        haus.append(1.0 if oversize_rule and p3.sum() > 10 * t3.sum() else hausdorff_naive(p3, t3))
    return 0.4 * np.nanmean(np.concatenate(dice)) + 0.6 * (1 - np.nanmean(haus))


def _shifted(masks: dict) -> dict:
    return {cd: np.roll(vol, (1, 2), axis=(2, 3)) for cd, vol in masks.items()}


def test_perfect_submission_scores_one(tiny_dataset, tmp_path):
    ds = tiny_dataset()
    sub = _write(_rows(ds.masks), tmp_path / "sub.csv")
    result = score_submission(ds.root, ds.csv, sub)
    assert (result.score, result.dice, result.hausdorff) == (1.0, 1.0, 0.0)
    assert sorted(result.per_case_day["case_day"]) == sorted(ds.masks)


def test_empty_submission_by_hand(tiny_dataset, tmp_path):
    ds = tiny_dataset()
    sub = _write(pd.DataFrame(columns=["id", "class", "predicted"]), tmp_path / "sub.csv")
    result = score_submission(ds.root, ds.csv, sub)
    # every row with truth scores Dice 0, rows without are skipped; every case-day with truth has Hausdorff 1
    n_truth_rows = sum(int(m.any(axis=(2, 3)).sum()) for m in ds.masks.values())
    assert n_truth_rows > 0
    assert result.dice == 0.0 and result.hausdorff == 1.0 and result.score == pytest.approx(0.4 * 0 + 0.6 * (1 - 1))
    assert result.per_case_day["n_rows_scored"].sum() == n_truth_rows


def test_missing_rows_count_as_empty(tiny_dataset, tmp_path):
    ds = tiny_dataset()
    dropped = "case1_day3"
    rows = _rows(ds.masks)
    sub = _write(rows[~rows["id"].str.startswith(dropped + "_")], tmp_path / "sub.csv")
    result = score_submission(ds.root, ds.csv, sub)
    kept = {cd: m for cd, m in ds.masks.items() if cd != dropped}
    assert result.score == pytest.approx(_expected(kept, ds.masks), abs=1e-12)
    n_rows = {cd: int(m.any(axis=(2, 3)).sum()) for cd, m in ds.masks.items()}
    assert result.dice == pytest.approx(1 - n_rows[dropped] / sum(n_rows.values()))
    assert result.hausdorff == pytest.approx(1 / len(ds.masks))


def test_shifted_submission_matches_the_definition(tiny_dataset, tmp_path):
    ds = tiny_dataset()
    pred = _shifted(ds.masks)
    result = score_submission(ds.root, ds.csv, _write(_rows(pred), tmp_path / "sub.csv"))
    assert result.score == pytest.approx(_expected(pred, ds.masks), abs=1e-12)
    assert 0 < result.score < 1


def test_mlebench_protocol(tiny_dataset, tmp_path):
    ds = tiny_dataset()
    pred = _shifted(ds.masks)
    big = "case2_day0"
    pred[big] = pred[big].copy()
    pred[big][:, 0] = 1  # a whole-image large bowel: far over 10x the truth's voxels
    sub = _write(_rows(pred), tmp_path / "sub.csv")
    kaggle = score_submission(ds.root, ds.csv, sub)
    mle = score_submission(ds.root, ds.csv, sub, protocol="mlebench")
    assert mle.score == pytest.approx(_expected(pred, ds.masks, column_major=True, oversize_rule=True), abs=1e-12)
    assert kaggle.score == pytest.approx(_expected(pred, ds.masks), abs=1e-12)
    haus = {p: r.per_case_day.set_index("case_day")["hausdorff"] for p, r in (("k", kaggle), ("m", mle))}
    assert haus["m"][big] == 1.0 and haus["k"][big] < 1.0
    assert not np.allclose(haus["k"].drop(big), haus["m"].drop(big))  # column-major decoding moves voxels
    assert mle.dice == pytest.approx(kaggle.dice, abs=1e-12)  # a pixel permutation leaves Dice alone


def test_cli_json_and_per_case_day(tiny_dataset, tmp_path, capsys):
    ds = tiny_dataset()
    sub = _write(_rows(_shifted(ds.masks)), tmp_path / "sub.csv")
    out = tmp_path / "out" / "per_case_day.csv"
    assert score.main(["--data-dir", str(ds.root), "--truth", str(ds.csv), "--pred", sub, "--json",
                       "--per-case-day", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    result = score_submission(ds.root, ds.csv, sub)
    assert summary["score"] == pytest.approx(result.score) and summary["dice"] == pytest.approx(result.dice)
    assert summary["hausdorff"] == pytest.approx(result.hausdorff)
    assert (summary["n_case_days"], summary["protocol"], summary["split"]) == (len(ds.masks), "kaggle", "train")
    table = pd.read_csv(out)
    assert list(table.columns) == ["case_day", "dice", "hausdorff", "n_rows_scored"] and len(table) == len(ds.masks)
    saved = tmp_path / "out" / "summary.json"
    assert score.main(["--data-dir", str(ds.root), "--truth", str(ds.csv), "--pred", sub, "--summary", str(saved)]) == 0
    assert capsys.readouterr().out.startswith("score")
    assert json.loads(saved.read_text()) == summary


def test_truth_subset_and_test_split_detection(tiny_dataset, tmp_path, capsys):
    ds = tiny_dataset(test=[(9, 1, 64, 72, 6)])
    one = "case2_day0"
    truth_csv = _write(_rows({one: ds.masks[one]}), tmp_path / "truth.csv")
    sub = _write(_rows(_shifted(ds.masks)), tmp_path / "sub.csv")  # also rows for the unscored case-days
    result = score_submission(ds.root, truth_csv, sub)
    assert result.per_case_day["case_day"].tolist() == [one]
    assert result.score == pytest.approx(_expected(_shifted(ds.masks), {one: ds.masks[one]}), abs=1e-12)
    test_truth = _rows({"case9_day1": np.zeros((6, 3, 72, 64), np.uint8)})
    test_truth.loc[4, "predicted"] = "100 20"
    test_csv = _write(test_truth, tmp_path / "test_truth.csv")
    assert score.main(["--data-dir", str(ds.root), "--truth", test_csv, "--pred", test_csv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["split"] == "test" and summary["n_case_days"] == 1 and summary["score"] == 1.0
    with pytest.raises(DataError, match="case9_day1_slice_0001 has no image"):
        score_submission(ds.root, test_csv, test_csv, split="train")


@pytest.mark.parametrize("fault, message", [
    ("duplicate", "row 3: duplicate row for id"),
    ("odd", "row 2: odd number"),
    ("past", "id case1_day0_slice_0001 class large_bowel: RLE run"),
    ("orphan", "id case1_day0_slice_0099 has no image"),
])
def test_cli_errors(tiny_dataset, tmp_path, capsys, fault, message):
    ds = tiny_dataset()
    rows = _rows(ds.masks)
    if fault == "duplicate":
        rows = pd.concat([rows.iloc[:1], rows])
    elif fault == "odd":
        rows.loc[0, "predicted"] = "1 2 3"
    elif fault == "past":
        rows.loc[0, "predicted"] = f"{64 * 80} 2"
    else:
        rows.loc[0, "id"] = "case1_day0_slice_0099"
    sub = _write(rows, tmp_path / "sub.csv")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(score.main, ["--data-dir", str(ds.root), "--truth", str(ds.csv), "--pred", sub])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "sub.csv" in err and message in err
    with pytest.raises(DataError):
        score_submission(ds.root, ds.csv, sub)


def test_truth_without_images_is_an_error(tiny_dataset, tmp_path):
    ds = tiny_dataset()
    truth = _write(_rows({"case42_day0": np.zeros((2, 3, 8, 8), np.uint8)}), tmp_path / "truth.csv")
    with pytest.raises(DataError, match="case42_day0_slice_0001 have no image"):
        score_submission(ds.root, truth, truth)
    assert math.isclose(score_submission(ds.root, ds.csv, ds.csv).score, 1.0)

"""Stage `make_folds`: case-grouped, stratified, deterministic folds and their validated loader."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.core.errors import DataError, run_cli
from src.data.folds import (
    FOLD_COLUMNS,
    assign_folds,
    fold_table,
    load_folds,
    make_folds,
)
from src.make_folds import main

REPO = Path(__file__).resolve().parents[1]
# six cases, some with two days, two image sizes
SPECS = [(1, 0, 64, 72, 8), (1, 5, 64, 72, 8), (2, 0, 72, 64, 9), (3, 1, 64, 64, 8), (3, 2, 64, 64, 10),
         (4, 0, 72, 64, 8), (6, 3, 64, 72, 8), (7, 0, 64, 64, 9), (7, 9, 64, 64, 8)]


def generated_slices(seed: int, n_cases: int = 40) -> pd.DataFrame:
    """A slice table like slice_table's, without images: cases differ a lot in their positive rate."""
    rng = np.random.default_rng(seed)
    rows = []
    for case in range(1, n_cases + 1):
        rate = rng.uniform(0.1, 0.8)
        for day in sorted(rng.choice(30, size=rng.integers(1, 4), replace=False)):
            rows += [(case, int(day), f"case{case}_day{day}", bool(rng.random() < rate)) for _ in range(rng.integers(30, 61))]
    return pd.DataFrame(rows, columns=["case", "day", "case_day", "positive"])


def positive_spread(folds: pd.DataFrame) -> float:
    shares = fold_table(folds)["positive_share"]
    return float(shares.max() - shares.min())


@pytest.fixture
def dataset(tiny_dataset):
    return tiny_dataset(train=SPECS)


def test_folds_group_cases_and_count_slices(dataset):
    folds = make_folds(dataset.root, n_folds=3, seed=0)
    assert list(folds.columns) == FOLD_COLUMNS + ["n_slices", "n_positive_slices"]
    assert folds["case_day"].tolist() == [f"case{c}_day{d}" for c, d, *_ in SPECS]
    assert (folds.groupby("case")["fold"].nunique() == 1).all()
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    for row in folds.itertuples():
        mask = dataset.masks[row.case_day]
        assert row.n_slices == len(mask)
        assert row.n_positive_slices == int(mask.any(axis=(1, 2, 3)).sum())


def test_same_seed_same_folds_other_seed_other_folds():
    slices = generated_slices(0)
    first = assign_folds(slices, 5, seed=1)
    pd.testing.assert_frame_equal(first, assign_folds(slices, 5, seed=1))
    assert not first["fold"].equals(assign_folds(slices, 5, seed=2)["fold"])


def test_stratification_evens_out_positive_shares():
    slices = generated_slices(3)
    rng = np.random.default_rng(0)
    cases = slices["case"].unique()
    random_spreads = []
    for _ in range(20):  # baseline: cases dealt to folds at random
        fold_of = {case: i % 5 for i, case in enumerate(rng.permutation(cases))}
        dealt = slices.assign(fold=slices["case"].map(fold_of)).groupby(["case", "day", "case_day"], as_index=False).agg(
            fold=("fold", "first"), n_slices=("positive", "size"), n_positive_slices=("positive", "sum"))
        random_spreads.append(positive_spread(dealt))
    for seed in (0, 1, 2):
        folds = assign_folds(slices, 5, seed)
        assert (folds.groupby("case")["fold"].nunique() == 1).all()
        assert positive_spread(folds) < 0.5 * np.mean(random_spreads)


def test_exclude_drops_case_days_and_rejects_unknown_ones(dataset):
    folds = make_folds(dataset.root, n_folds=3, exclude=["case3_day2", "case6_day3"])
    assert set(folds["case_day"]) == {f"case{c}_day{d}" for c, d, *_ in SPECS} - {"case3_day2", "case6_day3"}
    with pytest.raises(DataError, match="excluded case-day case3_day7 is not in the data"):
        make_folds(dataset.root, n_folds=3, exclude=["case3_day7"])


@pytest.mark.parametrize("n_folds, match", [(7, "7 folds asked for but the data has only 6 cases"),
                                            (1, "need at least 2 folds")])
def test_bad_fold_counts(dataset, n_folds, match):
    with pytest.raises(DataError, match=match):
        make_folds(dataset.root, n_folds=n_folds)


def test_data_dir_without_train_csv(dataset):
    dataset.csv.unlink()
    with pytest.raises(DataError, match=r"train\.csv: not found"):
        make_folds(dataset.root)


def test_load_folds_round_trip(tmp_path):
    folds = assign_folds(generated_slices(1, n_cases=12), 4, seed=5)
    path = tmp_path / "folds.csv"
    folds.to_csv(path, index=False)
    pd.testing.assert_frame_equal(load_folds(path), folds)


GOOD_FOLDS = pd.DataFrame({"case": [1, 1, 2, 3], "day": [0, 4, 0, 2],
                           "case_day": ["case1_day0", "case1_day4", "case2_day0", "case3_day2"], "fold": [0, 0, 1, 1]})


@pytest.mark.parametrize("broken, match", [
    (GOOD_FOLDS.drop(columns="fold"), r"missing column\(s\) fold"),
    (GOOD_FOLDS.iloc[:0], "no case-days listed"),
    (GOOD_FOLDS.assign(fold=["0", "0", "1", "x"]), "column fold must hold non-negative integers"),
    (GOOD_FOLDS.assign(fold=[0, 0, -1, -1]), "column fold must hold non-negative integers"),
    (GOOD_FOLDS.assign(case_day=["case1_day0", "case1_day5", "case2_day0", "case3_day2"]),
     "row 3: case_day 'case1_day5' does not match case 1 day 4"),
    (pd.concat([GOOD_FOLDS, GOOD_FOLDS.iloc[[2]]]), "row 6: case-day case2_day0 listed twice"),
    (GOOD_FOLDS.assign(fold=[0, 1, 1, 0]), "case 1 is in more than one fold"),
])
def test_load_folds_rejects_bad_files(tmp_path, broken, match):
    path = tmp_path / "folds.csv"
    broken.to_csv(path, index=False)
    with pytest.raises(DataError, match=match) as info:
        load_folds(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_load_folds_missing_file(tmp_path):
    with pytest.raises(DataError, match="folds file not found"):
        load_folds(tmp_path / "nope.csv")


def test_cli(dataset, tmp_path, capsys):
    out = tmp_path / "folds" / "folds.csv"
    common = ["--data-dir", str(dataset.root), "--seed", "3", "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "src.make_folds", *common, "--n-folds", "3", "--exclude", "case4_day0"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "left out 1 case-day(s): case4_day0" in done.stdout and "positive_share" in done.stdout
    pd.testing.assert_frame_equal(load_folds(out), make_folds(dataset.root, 3, 3, exclude=["case4_day0"]))

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [*common, "--n-folds", "9"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 9 folds asked for") and err.count("\n") == 1
    assert len(load_folds(out)) == len(SPECS) - 1  # the earlier file is untouched

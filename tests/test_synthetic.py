"""Synthetic dataset generator (the src.data.synthetic package, src.make_synthetic): layout, labels, faults, determinism."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from src.core.errors import DataError, run_cli
from src.data import synthetic
from src.data.layout import (
    CLASSES,
    check_labels_match_images,
    masks_for_case_day,
    read_labels,
    read_slice,
    scan_split,
)
from src.data.synthetic import planning, writer
from src.make_synthetic import main

SIZES = [(96, 80), (72, 88)]  # W x H, non-square so a swapped width/height shows
TINY = dict(cases=4, seed=3, sizes=SIZES, slices=[20, 12], workers=1)
NAME_RE = re.compile(r"^slice_(\d{4})_(\d+)_(\d+)_(\d\.\d\d)_(\d\.\d\d)\.png$")


def make(root: Path, name: str = "synth", **overrides) -> synthetic.SyntheticSummary:
    return synthetic.generate(root / name, **{**TINY, **overrides})


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def volumes(root: Path, split: str = "train", csv: str | Path = "train.csv") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """case-day -> (image uint16 (Z, H, W), masks uint8 (Z, 3, H, W)) decoded from the files."""
    index = scan_split(root, split)
    labels = read_labels(root / csv if isinstance(csv, str) else csv).set_index(["id", "class"])["rle"]
    out = {}
    for case_day, g in index.groupby("case_day", sort=False):
        h, w = int(g["height"].iloc[0]), int(g["width"].iloc[0])
        image = np.stack([read_slice(p, h, w) for p in g["path"]])
        out[case_day] = image, masks_for_case_day(labels, g["id"].tolist(), h, w)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, synthetic.SyntheticSummary]:
    root = tmp_path_factory.mktemp("synthetic")
    return root / "synth", make(root, test_cases=3)


# ---- layout -------------------------------------------------------------------------------------

def test_layout_names_width_first_16bit(tiny):
    root, summary = tiny
    assert sorted(p.name for p in root.iterdir()) == ["sample_submission.csv", "test", "train", "train.csv"]
    pngs = sorted((root / "train").glob("*/*/scans/*.png"))
    assert len(pngs) == summary.train_slices
    seen_sizes = set()
    for path in pngs:
        case_day = path.parent.parent.name
        assert re.fullmatch(r"case\d+_day\d+", case_day) and path.parent.parent.parent.name == case_day.split("_")[0]
        m = NAME_RE.match(path.name)
        assert m, path.name
        w, h = int(m.group(2)), int(m.group(3))
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint16 and img.shape == (h, w)
        assert m.group(4) == m.group(5) == "1.50"
        seen_sizes.add((w, h))
    assert seen_sizes == set(SIZES)
    index = scan_split(root, "train")
    assert (index.groupby("case_day")["slice"].min() == 1).all()
    assert set(index.groupby("case_day")["slice"].size()) == {20, 12}


def test_real_sizes_and_spacing_in_names():
    assert planning.image_sizes(None) == list(planning.REAL_SIZES)
    assert planning.image_sizes([(276, 276), (100, 90)]) == [(276, 276, 1.63), (100, 90, 1.50)]
    spec = planning.CaseDaySpec("train", 3, 1, 0, 360, 310, 1.5, 144)
    assert writer.slice_name(spec, 0) == "slice_0001_360_310_1.50_1.50.png"


def test_layout_readers_accept_train_and_test(tiny):
    root, summary = tiny
    labels = read_labels(root / "train.csv")
    check_labels_match_images(labels, scan_split(root, "train"), root / "train.csv")
    truth = read_labels(summary.truth_path)
    check_labels_match_images(truth, scan_split(root, "test"), summary.truth_path)
    sample = read_labels(root / "sample_submission.csv")
    check_labels_match_images(sample, scan_split(root, "test"), root / "sample_submission.csv")


# ---- labels -------------------------------------------------------------------------------------

def test_train_csv_rows_in_image_order_with_class_order(tiny):
    root, _ = tiny
    df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    assert list(df.columns) == ["id", "class", "segmentation"]
    index = scan_split(root, "train")
    assert df["id"].tolist() == [i for i in index["id"] for _ in CLASSES]
    assert df["class"].tolist() == list(CLASSES) * len(index)


def test_masks_inside_body_first_last_empty_all_classes_present(tiny):
    root, _ = tiny
    vols = volumes(root)
    present = np.zeros(len(CLASSES), bool)
    for case_day, (image, masks) in vols.items():
        assert not masks[[0, -1]].any(), case_day
        present |= masks.any(axis=(0, 2, 3))
        thr = 0.1 * np.percentile(image, 99)
        body = np.stack([ndimage.binary_fill_holes(ndimage.binary_opening(s > thr, iterations=1)) for s in image])
        labelled = masks.any(axis=1)
        assert (body[labelled]).mean() > 0.999, case_day
        assert labelled.sum() < 0.5 * body.sum()
    assert present.all()


def test_about_two_thirds_of_rows_empty(tmp_path):
    summary = make(tmp_path, cases=6, sizes=[(96, 96)], slices=[48])
    df = pd.read_csv(tmp_path / "synth" / "train.csv", dtype=str, keep_default_na=False)
    fraction = (df["segmentation"] == "").mean()
    assert summary.empty_fraction == pytest.approx(fraction, abs=1e-4)
    assert 0.55 < fraction < 0.78
    assert (df.groupby("class")["segmentation"].apply(lambda s: (s != "").mean()) > 0.1).all()


def test_days_grouped_by_case_with_shared_anatomy(tmp_path):
    make(tmp_path, cases=8, sizes=[(96, 96)], slices=[32])
    index = scan_split(tmp_path / "synth", "train")
    per_case = index.groupby("case")["day"].unique()
    assert per_case.map(len).between(1, 5).all() and per_case.map(len).max() > 1
    assert index["case"].between(1, 150).all() and index["day"].between(0, 41).all()
    cases = sorted(per_case.index)
    assert np.diff(cases).max() > 1  # non-contiguous ids like the real data
    vols = volumes(tmp_path / "synth")
    footprints = {cd: m.any(axis=0) for cd, (_, m) in vols.items()}  # (3, H, W) projection along z
    same, other = [], []
    for a in footprints:
        for b in footprints:
            if a < b:
                inter = (footprints[a] & footprints[b]).sum()
                dice = 2 * inter / (footprints[a].sum() + footprints[b].sum())
                (same if a.split("_")[0] == b.split("_")[0] else other).append(dice)
    assert same and np.mean(same) > np.mean(other) + 0.05
    peaks = [int(image.max()) for image, _ in vols.values()]
    assert max(peaks) > 4 * min(peaks)  # intensity scale varies widely between cases


# ---- test split ---------------------------------------------------------------------------------

def test_test_split_sample_submission_and_truth_outside(tiny):
    root, summary = tiny
    truth_path = Path(summary.truth_path)
    assert truth_path == root.parent / "synth_test_truth.csv" and truth_path.is_file()
    train = scan_split(root, "train")
    test = scan_split(root, "test")
    assert len(test) == summary.test_slices > 0
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert list(sample.columns) == ["id", "class", "predicted"] and (sample["predicted"] == "").all()
    assert sample["id"].tolist() == [i for i in test["id"] for _ in CLASSES]
    truth = pd.read_csv(truth_path, dtype=str, keep_default_na=False)
    assert truth[["id", "class"]].equals(sample[["id", "class"]])
    assert (truth["segmentation"] != "").any()
    train_days = train.groupby("case")["day"].max()
    test_cases = set(test["case"])
    unseen = test_cases - set(train["case"])
    seen = test_cases & set(train["case"])
    assert unseen and seen and summary.test_cases == len(test_cases)
    for case in seen:
        assert test.loc[test["case"] == case, "day"].min() > train_days[case]


def test_no_test_cases_writes_empty_test_and_header_only_submission(tmp_path):
    summary = make(tmp_path, cases=1)
    root = tmp_path / "synth"
    assert summary.truth_path is None and not (tmp_path / "synth_test_truth.csv").exists()
    assert (root / "test").is_dir() and not any((root / "test").iterdir())
    assert (root / "sample_submission.csv").read_text().strip() == "id,class,predicted"


def test_truth_inside_dataset_is_refused(tmp_path):
    with pytest.raises(DataError, match="outside"):
        make(tmp_path, test_cases=1, truth_out=tmp_path / "synth" / "truth.csv")


# ---- determinism and atomic writes --------------------------------------------------------------

def test_same_bytes_for_same_args_any_worker_count(tmp_path, monkeypatch):
    a = make(tmp_path, "a", cases=2, test_cases=1, workers=1)
    monkeypatch.setattr(writer, "INLINE_VOXELS", 0)  # use the process pool even for this tiny set
    b = make(tmp_path, "b", cases=2, test_cases=1, workers=2)
    assert file_hashes(tmp_path / "a") == file_hashes(tmp_path / "b")
    assert Path(a.truth_path).read_bytes() == Path(b.truth_path).read_bytes()
    make(tmp_path, "c", cases=2, test_cases=1, seed=TINY["seed"] + 1)
    assert file_hashes(tmp_path / "a") != file_hashes(tmp_path / "c")


def test_refuses_non_empty_out_unless_overwrite(tmp_path):
    out = tmp_path / "synth"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="--overwrite"):
        make(tmp_path, cases=1)
    assert (out / "keep.txt").exists()
    make(tmp_path, cases=1, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "train.csv").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]  # no temporary siblings left


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def fail_second(spec, seed, root):
        calls.append(spec)
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return real(spec, seed, root)

    real = writer.write_case_day
    monkeypatch.setattr(writer, "write_case_day", fail_second)
    with pytest.raises(RuntimeError):
        make(tmp_path, cases=3, test_cases=1)
    assert list(tmp_path.iterdir()) == []


# ---- label faults -------------------------------------------------------------------------------

def test_ambiguous_tail_drops_last_labelled_slices_only(tmp_path):
    clean = make(tmp_path, "clean", cases=2, test_cases=1)
    cut = make(tmp_path, "cut", cases=2, test_cases=1, ambiguous_tail=3)
    assert cut.empty_fraction > clean.empty_fraction
    a, b = volumes(tmp_path / "clean"), volumes(tmp_path / "cut")
    for case_day, (image, masks) in a.items():
        assert np.array_equal(image, b[case_day][0])  # the image still shows the organs
        last = np.flatnonzero(masks.any(axis=(1, 2, 3)))[-1]
        expected = masks.copy()
        expected[last - 2:last + 1] = 0
        assert np.array_equal(b[case_day][1], expected), case_day
    assert Path(clean.truth_path).read_bytes() == Path(cut.truth_path).read_bytes()  # test truth stays clean


def test_bad_case_day_spoils_only_that_case_day(tmp_path):
    make(tmp_path, "clean", cases=3)
    a = volumes(tmp_path / "clean")
    victim = next(cd for cd, (_, m) in a.items() if m.sum() > 0)
    summary = make(tmp_path, "bad", cases=3, bad_case_days=[victim])
    assert summary.bad_case_days == (victim,)
    b = volumes(tmp_path / "bad")
    assert a.keys() == b.keys()
    for case_day, (image, masks) in a.items():
        assert np.array_equal(image, b[case_day][0])
        if case_day != victim:
            assert np.array_equal(masks, b[case_day][1])
    good, bad = a[victim][1].astype(bool), b[victim][1].astype(bool)
    dice = 2 * (good & bad).sum() / (good.sum() + bad.sum())
    assert dice < 0.5


def test_cli_forces_bad_case_days_to_exist(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["--out", str(out), "--cases", "2", "--sizes", "64x72", "--slices", "12", "--workers", "1",
                 "--bad-case-day", "case7_day0,case150_day40", "--bad-case-day", "case7_day2"]) == 0
    assert "wrote" in capsys.readouterr().out
    case_days = set(scan_split(out, "train")["case_day"])
    assert {"case7_day0", "case7_day2", "case150_day40"} <= case_days
    assert scan_split(out, "train").groupby("case")["day"].nunique().max() <= 6


def test_cli_bad_input_is_one_line_error(tmp_path, capsys):
    for argv in (["--sizes", "96by96"], ["--bad-case-day", "case7"], ["--cases", "0"]):
        with pytest.raises(SystemExit) as info:
            run_cli(main, ["--out", str(tmp_path / "x"), "--workers", "1"] + argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()

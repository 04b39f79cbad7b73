"""Stage `prepare`: PNG layout -> cached case-day volumes, idempotent, atomic, with one-line errors."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import src.data.cache_entries
from src.core.errors import DataError
from src.data import rle
from src.data.preparation import prepare
from src.data.volumes import VolumeCache, read_meta

REPO = Path(__file__).resolve().parents[1]
TEST_SPLIT = [(9, 1, 70, 66, 5)]


def run_stage(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "src.prepare", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def snapshot(cache: Path) -> dict[str, tuple[int, bytes]]:
    """mtime and bytes of every file under the cache."""
    return {str(p.relative_to(cache)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(cache.rglob("*"))
            if p.is_file()}


def assert_cached(cache: Path, ds, case_days: list[str] | None = None) -> None:
    """The cache holds exactly ds's train case-days, equal to the generated arrays."""
    volumes = VolumeCache(cache)
    expected = sorted(ds.masks, key=lambda cd: tuple(int(x) for x in cd.removeprefix("case").split("_day")))
    assert volumes.case_days("train") == (case_days or expected)
    for case_day in volumes.case_days("train"):
        vol = volumes.load(case_day, "train")
        assert isinstance(vol.image, np.memmap) and isinstance(vol.mask, np.memmap)
        assert vol.image.dtype == np.uint16 and vol.mask.dtype == np.uint8
        np.testing.assert_array_equal(vol.image, ds.images[case_day])
        np.testing.assert_array_equal(vol.mask, ds.masks[case_day])


@pytest.fixture
def dataset(tiny_dataset):
    return tiny_dataset(test=TEST_SPLIT)


def test_round_trip_train_and_test(dataset, tmp_path):
    cache = tmp_path / "cache"
    summary = prepare(dataset.root, cache, split="all")
    assert (summary.written, summary.skipped, summary.removed) == (5, 0, 0)
    assert_cached(cache, dataset)
    meta = read_meta(cache, "train", "case2_day0")
    assert (meta["case"], meta["day"], meta["height"], meta["width"], meta["sx"], meta["sy"]) == (2, 0, 96, 64, 1.63, 1.63)
    assert meta["ids"] == [f"case2_day0_slice_{z:04d}" for z in range(1, 13)] and meta["slices"] == list(range(1, 13))
    test = VolumeCache(cache).load("case9_day1", "test")
    assert test.mask is None and not (cache / "test" / "case9_day1" / "mask.npy").exists()
    assert test.image.shape == (5, 66, 70) and (read_meta(cache, "test", "case9_day1")["sx"], read_meta(cache, "test", "case9_day1")["sy"]) == (1.5, 1.5)
    np.testing.assert_array_equal(test.image, dataset.images["case9_day1"])


def test_second_run_skips_everything_and_touches_nothing(dataset, tmp_path):
    cache = tmp_path / "cache"
    prepare(dataset.root, cache, split="all")
    before = snapshot(cache)
    summary = prepare(dataset.root, cache, split="all")
    assert (summary.written, summary.skipped, summary.removed) == (0, 5, 0)
    assert snapshot(cache) == before


def test_output_does_not_depend_on_workers(dataset, tmp_path):
    prepare(dataset.root, tmp_path / "one", workers=1)
    prepare(dataset.root, tmp_path / "three", workers=3)
    one, three = snapshot(tmp_path / "one"), snapshot(tmp_path / "three")
    assert one.keys() == three.keys()
    assert all(one[k][1] == three[k][1] for k in one)


def test_changed_case_days_are_rewritten(dataset, tmp_path):
    cache = tmp_path / "cache"
    prepare(dataset.root, cache)
    path = dataset.slice_path("case1_day0", 4)
    new_plane = np.full((64, 80), 1234, np.uint16)
    cv2.imwrite(str(path), new_plane)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    labels = pd.read_csv(dataset.csv, dtype=str, keep_default_na=False)
    new_mask = np.zeros((96, 64), np.uint8)
    new_mask[10:20, 5:9] = 1
    labels.loc[(labels["id"] == "case2_day0_slice_0003") & (labels["class"] == "stomach"), "segmentation"] = rle.encode(new_mask)
    labels.to_csv(dataset.csv, index=False)

    summary = prepare(dataset.root, cache)
    assert (summary.written, summary.skipped, summary.removed) == (2, 2, 0)
    dataset.images["case1_day0"][4] = new_plane
    dataset.masks["case2_day0"][2, 2] = new_mask
    assert_cached(cache, dataset)


def test_vanished_case_days_are_removed(dataset, tmp_path, capsys):
    cache = tmp_path / "cache"
    prepare(dataset.root, cache, split="all")
    shutil.rmtree(dataset.root / "train" / "case5")
    labels = pd.read_csv(dataset.csv, dtype=str, keep_default_na=False)
    labels[~labels["id"].str.startswith("case5_")].to_csv(dataset.csv, index=False)
    shutil.rmtree(dataset.root / "test")
    del dataset.masks["case5_day7"]

    summary = prepare(dataset.root, cache, split="all")
    assert (summary.written, summary.skipped, summary.removed) == (0, 3, 2)
    assert not (cache / "train" / "case5_day7").exists() and VolumeCache(cache).case_days("test") == []
    assert_cached(cache, dataset)
    assert f"nothing to cache in {dataset.root / 'test'}" in capsys.readouterr().out


def test_bad_source_leaves_no_entry_for_its_case_day(dataset, tmp_path):
    cache = tmp_path / "cache"
    prepare(dataset.root, cache)
    bad = dataset.slice_path("case1_day3", 2)
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=f"{bad}: unreadable PNG"):
        prepare(dataset.root, cache)
    assert not (cache / "train" / "case1_day3").exists()
    assert "case1_day3" not in VolumeCache(cache).case_days()


def test_rle_past_the_image_fails_before_anything_is_written(dataset, tmp_path):
    labels = pd.read_csv(dataset.csv, dtype=str, keep_default_na=False)
    labels.loc[labels["id"] == "case5_day7_slice_0002", "segmentation"] = f"{72 * 72 - 3} 10"
    labels.to_csv(dataset.csv, index=False)
    with pytest.raises(DataError, match=r"train\.csv: id case5_day7_slice_0002 class large_bowel: .*past the image"):
        prepare(dataset.root, tmp_path / "cache", workers=1)
    assert not (tmp_path / "cache" / "train" / "case5_day7").exists()


def test_crash_while_writing_leaves_no_complete_looking_entry(dataset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    prepare(dataset.root, cache)
    os.utime(dataset.slice_path("case2_day0", 0), ns=(0, 10**9))

    def crash(files, image, mask, meta):
        files.folder.mkdir(parents=True, exist_ok=True)
        np.save(files.image, image[:1])  # half-written, no meta
        raise KeyboardInterrupt

    monkeypatch.setattr(src.data.cache_entries, "write_entry",
                        lambda *a: crash(*a) if a[0].folder.name == "case2_day0" else None)
    with pytest.raises(KeyboardInterrupt):
        prepare(dataset.root, cache, workers=1)
    assert "case2_day0" not in VolumeCache(cache).case_days()
    monkeypatch.undo()
    summary = prepare(dataset.root, cache)
    assert (summary.written, summary.skipped) == (1, 3)
    assert_cached(cache, dataset)


def test_default_cache_dir_is_under_the_working_directory(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = prepare(dataset.root)
    assert summary.cache_dir == Path("cache") / dataset.root.name
    assert VolumeCache(tmp_path / "cache" / dataset.root.name).case_days() == sorted(dataset.masks)


def test_missing_train_csv(dataset, tmp_path):
    dataset.csv.unlink()
    with pytest.raises(DataError, match="train.csv: not found"):
        prepare(dataset.root, tmp_path / "cache")


def test_cli(dataset, tmp_path):
    help_run = run_stage("--help")
    assert help_run.returncode == 0 and "--data-dir" in help_run.stdout and "--workers" in help_run.stdout

    done = run_stage("--data-dir", str(dataset.root), "--cache-dir", str(tmp_path / "cache"), "--split", "test")
    assert done.returncode == 0, done.stderr
    assert "1 case-days written, 0 skipped, 0 removed" in done.stdout
    assert VolumeCache(tmp_path / "cache").case_days("test") == ["case9_day1"]

    bad = dataset.slice_path("case1_day0", 1)
    cv2.imwrite(str(bad), np.zeros((64, 80), np.uint8))
    failed = run_stage("--data-dir", str(dataset.root), "--cache-dir", str(tmp_path / "cache"))
    assert failed.returncode == 2
    assert failed.stderr.startswith(f"error: {bad}: expected a 16-bit") and failed.stderr.count("\n") == 1
    assert not (tmp_path / "cache" / "train" / "case1_day0").exists()

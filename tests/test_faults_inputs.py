"""Values read from files, validated where they enter: RLE tokens, slice PNGs (size cap before
decoding, special files, links out of the data folder), sample_submission.csv, --img-size, encoder
weights, saved predictions, and the Kaggle bundle's check of its own files.

Each catalogue case runs through the real CLI wrapper in a fresh copy of tiny trained runs and is
checked as tests/test_faults.py checks its own: exit code 2, exactly one `error:` line naming the
file (or flag) and the problem, no traceback, no partial artifact, the previous artifact untouched.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_faults import Case, World, _submit_args, _train_args, assert_one_line_exit_2, base, world  # noqa: F401
from test_kernel import NO_NETWORK

from src import ensemble, kernel, prepare, report, score, submit, train
from src.core.artifacts import RunDir
from src.core.errors import DataError, run_cli
from src.data import rle
from src.data.layout import MAX_IMAGE_PIXELS, parse_id, scan_split
from src.inference.runs import TrainedRun

BIG_START = "9223372036854775800"  # start + length wraps an int64 around


# ---- setups -------------------------------------------------------------------------------------
def _edit_csv(path: Path, row: int, column: str, value: str) -> None:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[row, column] = value
    table.to_csv(path, index=False)


def _first_train_slice(w: World) -> Path:
    return sorted((w.data / "train").glob("*/*/scans/*.png"))[0]


def _replace_slice(w: World, make) -> None:
    """Replace the first train slice by what `make(path)` puts at its path."""
    path = _first_train_slice(w)
    path.unlink()
    make(path)


def _png_claiming(w: World, height: int, width: int) -> None:
    """The first slice's PNG with an IHDR header claiming another size (the pixels are never decoded)."""
    path = _first_train_slice(w)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    path.write_bytes(bytes(data))


def _empty_test_with_sample(w: World, content: bytes) -> None:
    shutil.rmtree(w.data / "test")
    (w.data / "sample_submission.csv").write_bytes(content)


def _oof(w: World) -> Path:
    return sorted(TrainedRun.load(w.runs / "unet").prediction_files("oof").values())[0]


def _save_oof(w: World, change) -> None:
    path = _oof(w)
    np.save(path, change(np.load(path)))


def _tune_args(w: World) -> list[str]:
    return ["tune", "--runs", str(w.runs / "unet"), "--cache-dir", str(w.cache), "--out", str(w.root / "e.json"),
            "--passes", "0", "--holdout-folds", "none"]


def _prepare_args(w: World, *extra: str) -> list[str]:
    return ["--data-dir", str(w.data), "--cache-dir", str(w.root / "c2"), *extra]


def _slice_case_day_cached(w: World) -> Path:
    """The cache entry (in c2) of the first train slice's case-day."""
    return w.root / "c2" / "train" / _first_train_slice(w).parent.parent.name


def _row_case_day_cached(w: World) -> Path:
    """The cache entry (in c2) of the case-day of train.csv's first row."""
    first_id = pd.read_csv(w.data / "train.csv", dtype=str, nrows=1)["id"].iloc[0]
    return w.root / "c2" / "train" / parse_id(first_id)[0]


def _set_one(value: float):
    """A change of an OOF array: its eighth value set to `value`."""
    def change(array: np.ndarray) -> np.ndarray:
        array = array.copy()
        array.reshape(-1)[7] = value
        return array
    return change


def _score_args(w: World) -> list[str]:
    return ["--data-dir", str(w.data), "--truth", str(w.data / "train.csv"), "--pred", str(w.root / "pred.csv"),
            "--summary", str(w.root / "s.json")]


def _pred_with(w: World, value: str) -> None:
    shutil.copy2(w.data / "train.csv", w.root / "pred.csv")
    _edit_csv(w.root / "pred.csv", 0, "segmentation", value)


CASES = [
    # ---- RLE tokens: train.csv and a scored submission
    Case("prepare: RLE start near 2**63", prepare.main, _prepare_args, "runs past the image", lambda w: "train.csv",
         setup=lambda w: _edit_csv(w.data / "train.csv", 0, "segmentation", f"{BIG_START} 100"),
         absent=_row_case_day_cached),
    Case("prepare: RLE token above int64", prepare.main, _prepare_args, "RLE value too large",
         lambda w: "train.csv row 2", setup=lambda w: _edit_csv(w.data / "train.csv", 0, "segmentation",
                                                                 "1 99999999999999999999"),
         absent=_row_case_day_cached),
    Case("prepare: negative RLE token", prepare.main, _prepare_args, "non-integer token '-5'",
         lambda w: "train.csv row 2", setup=lambda w: _edit_csv(w.data / "train.csv", 0, "segmentation", "-5 3")),
    Case("score: submission RLE start near 2**63", score.main, _score_args, "runs past the image",
         lambda w: "pred.csv", setup=lambda w: _pred_with(w, f"{BIG_START} 100"),
         untouched=lambda w: w.previous(w.root / "s.json")),
    Case("score: submission RLE token above int64", score.main, _score_args, "RLE value too large",
         lambda w: "pred.csv row 2", setup=lambda w: _pred_with(w, "99999999999999999999 1")),
    # ---- slice PNGs
    Case("prepare: slice named 20000x20000", prepare.main, _prepare_args,
         f"= 400000000 pixels is over the cap of {MAX_IMAGE_PIXELS} (raise it with --max-image-pixels)",
         lambda w: "slice_0001_20000_20000_", absent=_slice_case_day_cached,
         setup=lambda w: _first_train_slice(w).rename(
             _first_train_slice(w).with_name("slice_0001_20000_20000_1.50_1.50.png"))),
    Case("prepare: slices over a lowered cap", prepare.main, lambda w: _prepare_args(w, "--max-image-pixels", "100"),
         "pixels is over the cap of 100", lambda w: "slice_0001_"),
    Case("prepare: cap below one pixel", prepare.main, lambda w: _prepare_args(w, "--max-image-pixels", "0"),
         "must be at least 1", lambda w: "--max-image-pixels 0"),
    Case("submit: slices over a lowered cap", submit.main, lambda w: [*_submit_args(w), "--max-image-pixels", "100"],
         "pixels is over the cap of 100", lambda w: "slice_0001_", absent=lambda w: w.root / "sub.csv"),
    Case("score: slices over a lowered cap", score.main, lambda w: [*_score_args(w), "--max-image-pixels", "100"],
         "pixels is over the cap of 100", lambda w: "slice_0001_", absent=lambda w: w.root / "s.json",
         setup=lambda w: shutil.copy2(w.data / "train.csv", w.root / "pred.csv")),
    Case("score: cap below one pixel", score.main, lambda w: [*_score_args(w), "--max-image-pixels", "0"],
         "must be at least 1", lambda w: "--max-image-pixels 0",
         setup=lambda w: shutil.copy2(w.data / "train.csv", w.root / "pred.csv")),
    Case("prepare: PNG header claiming 2**31 pixels", prepare.main, _prepare_args, "image is 65536x32768 (HxW)",
         lambda w: _first_train_slice(w).name, setup=lambda w: _png_claiming(w, 65536, 32768),
         absent=_slice_case_day_cached),
    Case("prepare: a FIFO as a slice", prepare.main, _prepare_args, "not a regular file (a FIFO)",
         lambda w: _first_train_slice(w).name, setup=lambda w: _replace_slice(w, os.mkfifo)),
    Case("prepare: a folder named like a slice", prepare.main, _prepare_args, "not a regular file (a folder)",
         lambda w: _first_train_slice(w).name, setup=lambda w: _replace_slice(w, Path.mkdir)),
    Case("prepare: a link out of the data folder", prepare.main, _prepare_args,
         "a link pointing outside its split folder", lambda w: _first_train_slice(w).name,
         setup=lambda w: (shutil.copy2(_first_train_slice(w), w.root / "outside.png"),
                          _replace_slice(w, lambda p: p.symlink_to(w.root / "outside.png")))),
    # ---- sample_submission.csv on the empty-test path
    Case("submit: empty sample submission", submit.main, _submit_args, "cannot read CSV",
         lambda w: "sample_submission.csv", setup=lambda w: _empty_test_with_sample(w, b""),
         untouched=lambda w: w.previous(w.root / "sub.csv")),
    Case("submit: binary sample submission", submit.main, _submit_args, "cannot read CSV",
         lambda w: "sample_submission.csv",
         setup=lambda w: _empty_test_with_sample(w, bytes(range(256)) * 4), absent=lambda w: w.root / "sub.csv"),
    Case("submit: sample submission with an unterminated quote", submit.main, _submit_args, "EOF inside string",
         lambda w: "sample_submission.csv",
         setup=lambda w: _empty_test_with_sample(w, b'id,class,predicted\n"case1_day0_slice_0001,stomach,\n')),
    Case("submit: sample submission with an unknown class", submit.main, _submit_args, "unknown class 'liver'",
         lambda w: "sample_submission.csv row 3",
         setup=lambda w: _empty_test_with_sample(w, b"id,class,predicted\ncase1_day0_slice_0001,stomach,\n"
                                                    b"case1_day0_slice_0001,liver,\n"),
         untouched=lambda w: w.previous(w.root / "sub.csv")),
    Case("submit: sample submission with a malformed id", submit.main, _submit_args, "malformed id 'case1_slice_1'",
         lambda w: "sample_submission.csv row 2",
         setup=lambda w: _empty_test_with_sample(w, b"id,class,predicted\ncase1_slice_1,stomach,\n")),
    # ---- flags and weights of a training
    Case("train: img size 100000", train.main, lambda w: _train_args(w, "--img-size", "100000", "--name", "x"),
         "must be between 1 and 4096", lambda w: "--img-size 100000", absent=lambda w: w.runs / "x"),
    Case("train: det img size 8192", train.main,
         lambda w: [*_train_args(w, "--img-size", "8192", "--name", "x"), "--stage", "det", "--arch", "yolo26n"],
         "must be between 1 and 4096", lambda w: "--img-size 8192", absent=lambda w: w.runs / "x"),
    Case("train: encoder weights holding a non-tensor", train.main,
         lambda w: _train_args(w, "--arch", "unet_tiny", "--name", "x", "--encoder-weights", str(w.root / "enc.pth")),
         "not a state dict of tensors (entry 'conv.weight' holds a int)", lambda w: "enc.pth",
         setup=lambda w: torch.save({"conv.weight": 3}, w.root / "enc.pth")),
    # ---- saved predictions, wherever they are read
    Case("ensemble: 0-d OOF array", ensemble.main, _tune_args, "prediction of shape () and dtype float16",
         lambda w: ".npy", setup=lambda w: _save_oof(w, lambda a: np.float16(0.5)),
         untouched=lambda w: w.previous(w.root / "e.json")),
    Case("ensemble: float32 OOF array", ensemble.main, _tune_args, "dtype float32; expected float16",
         lambda w: ".npy", setup=lambda w: _save_oof(w, lambda a: a.astype(np.float32))),
    Case("ensemble: OOF of three dimensions", ensemble.main, _tune_args, "expected float16 (Z, 3) presence",
         lambda w: ".npy", setup=lambda w: _save_oof(w, lambda a: a[:, 0])),
    Case("ensemble: OOF probability above 1", ensemble.main, _tune_args, "holds outside [0, 1] probabilities",
         lambda w: ".npy", setup=lambda w: _save_oof(w, _set_one(1.5))),
    Case("ensemble: negative OOF probability", ensemble.main, _tune_args, "holds outside [0, 1] probabilities",
         lambda w: ".npy", setup=lambda w: _save_oof(w, _set_one(-0.25))),
    Case("report: 0-d OOF array", report.main,
         lambda w: ["--runs", str(w.runs / "unet"), "--cache-dir", str(w.cache), "--out", str(w.root / "rep")],
         "prediction of shape ()", lambda w: ".npy", setup=lambda w: _save_oof(w, lambda a: np.float16(0.5)),
         absent=lambda w: w.root / "rep"),
    # ---- the kernel build
    Case("kernel: run path ending in ..", kernel.main,
         lambda w: ["build", "--ensemble", str(w.ensemble), "--out", str(w.root / "k"), "--wheels", ""],
         "a run path must end in the run's folder name", lambda w: "fold0/..", absent=lambda w: w.root / "k",
         setup=lambda w: _repoint(w, lambda name: str(w.runs / name / "fold0" / ".."))),
]


def _repoint(w: World, path_of) -> None:
    record = json.loads(w.ensemble.read_text())
    for run in record["runs"]:
        run["path"] = path_of(run["name"])
    w.ensemble.write_text(json.dumps(record))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_exit_2(case, world, capsys):
    assert_one_line_exit_2(case, world, capsys)


def test_every_rle_run_is_checked_before_it_is_painted():
    """start >= 1, length >= 1, start + length - 1 within the slice, with no int64 wrap-around."""
    for text, message in ((f"{BIG_START} 100", "runs past the image"), ("4 9223372036854775807", "runs past"),
                          ("1 0", "non-positive length"), ("0 1", "start below 1"), ("1 +2", "non-integer")):
        with pytest.raises(ValueError, match=message):
            rle.decode(text, (64, 64))
    np.testing.assert_array_equal(rle.decode("4096 1", (64, 64)).ravel()[-2:], [0, 1])


def test_the_cap_is_on_the_pixels_of_a_slice(world):
    first = _first_train_slice(world)
    width, height = (int(v) for v in first.name.split("_")[2:4])
    assert len(scan_split(world.data, "train", max_pixels=width * height))  # at the cap: admitted
    with pytest.raises(DataError, match=f"{first}: image of {width}x{height} .* over the cap of {width * height - 1}"):
        scan_split(world.data, "train", max_pixels=width * height - 1)


# ---- the Kaggle bundle's check of its own files ---------------------------------------------
@pytest.fixture
def bundle(world) -> Path:
    _repoint(world, lambda name: str(world.runs / name))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(kernel.main, ["build", "--ensemble", str(world.ensemble), "--out", str(world.root / "bundle"),
                              "--wheels", ""])
    assert exit_info.value.code == 0
    return world.root / "bundle"


def _run_inference(bundle: Path, *extra: str) -> subprocess.CompletedProcess:
    data = bundle.parent / "data"
    return subprocess.run([sys.executable, str(bundle / "inference.py"), "--data-dir", str(data), "--out",
                           str(bundle.parent / "kernel.csv"), "--device", "cpu", *extra], capture_output=True,
                          text=True, env={**os.environ, **NO_NETWORK}, cwd=bundle.parent)


def _refused(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(f in errors[0] for f in fragments), errors[0]
    assert "files verified" not in proc.stdout


def _marker_module(marker: Path) -> str:
    return f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"


def test_inference_refuses_an_added_module_before_importing_anything(bundle, world):
    shadow = bundle / "code" / "numpy.py"  # src.submit runs in code/: this would shadow numpy
    shadow.write_text(_marker_module(world.marker))
    _refused(_run_inference(bundle), f"{shadow}: not in manifest.json")
    shadow.unlink()
    beside = bundle / "hashlib.py"  # the script's own folder is first on its sys.path
    beside.write_text(_marker_module(world.marker))
    _refused(_run_inference(bundle), f"{beside}: not in manifest.json")
    beside.unlink()
    (bundle / "code" / "src" / "extra").mkdir()  # a folder nothing lists (a namespace package)
    _refused(_run_inference(bundle), "extra: not in manifest.json")
    assert not world.marker.exists(), "a module of the bundle ran before the bundle was verified"
    assert not (bundle.parent / "kernel.csv").exists()


def test_inference_refuses_a_file_whose_manifest_entry_was_removed(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    weights = next(rel for rel in manifest["files"] if rel.startswith("runs/unet/fold0/"))
    del manifest["files"][weights]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    _refused(_run_inference(bundle), f"{bundle / weights}: not in manifest.json")


@pytest.mark.parametrize("change, fragment", [
    (lambda m: m.update(files=list(m["files"])), "needs files, packages and bytes"),
    (lambda m: m.pop("bytes"), "needs files, packages and bytes"),
    (lambda m: m["files"].update({"../evil.py": next(iter(m["files"].values()))}), "'../evil.py' is not a plain path"),
    (lambda m: m["files"].update({"/etc/passwd": next(iter(m["files"].values()))}), "is not a plain path"),
    (lambda m: next(iter(m["files"].values())).pop("sha256"), "needs a sha256 and a size"),
    (lambda m: m["packages"].append({"wheel": "wheels/x.whl"}), "a package whose wheel is not a listed file"),
], ids=["files-list", "no-bytes", "dotdot", "absolute", "no-sha", "unlisted-wheel"])
def test_a_malformed_manifest_is_one_line(bundle, change, fragment):
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    _refused(_run_inference(bundle), f"{bundle / 'manifest.json'}: malformed bundle manifest", fragment)
    (bundle / "manifest.json").write_text("[" * 100000)
    _refused(_run_inference(bundle), "manifest.json: unreadable bundle manifest")


def test_a_failing_submit_exits_with_its_own_code_and_line(bundle):
    assert RunDir(bundle / "runs" / "unet").folds()  # the bundle verifies; src.submit then refuses the flag
    proc = _run_inference(bundle, "--allow-train-fallback", "-1")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert errors == ["error: --allow-train-fallback -1: must be >= 0"]
    assert "files verified" in proc.stdout and "src.submit failed (exit code 2)" in proc.stdout

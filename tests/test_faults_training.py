"""Training never destroys the user's work: bad --device values fail before anything, a re-train
fails or dies without touching the finished fold (it trains into fold<k>.staging/), --resume follows
the rule of src.engine.fold_writer, and one process at a time writes a fold (its lock).

Each fault runs through the real CLI wrapper: exit 2, one `error:` line naming the flag or file,
no traceback, the previous artifact byte for byte as it was.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import fit_until_killed

from src import predict, submit, train
from src.core.artifacts import RunDir, fold_dir
from src.core.device import DEVICE_NAMES, select_device
from src.core.errors import DataError, run_cli
from src.core.lock import exclusive_lock
from src.data.folds import make_folds
from src.data.preparation import prepare
from src.data.synthetic import generate
from src.data.volumes import VolumeCache
from src.engine.config import Seg2DConfig
from src.engine.fold_writer import Plan, plan_training
from src.engine.seg2d import Seg2DTask
from src.engine.trainer import Trainer, TrainingState
from src.ensembling.submission import SubmitOptions
from src.inference.predict import PredictOptions

ROOT = Path(__file__).resolve().parent.parent
# a --device value and what is wrong with it (cuda:7: no CUDA here, or fewer than 8 GPUs)
BAD_DEVICES = {"cuda:7": "CUDA device", "cuda:abc": DEVICE_NAMES, "gpu0": DEVICE_NAMES, "mps": "no MPS device",
               "cpu:1": DEVICE_NAMES}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Tiny data and one finished run, `unet` fold 0 (2 epochs)."""
    root = tmp_path_factory.mktemp("faults_training")
    generate(root / "data", cases=4, seed=0, sizes=[(72, 64), (64, 64)], slices=[12, 10], workers=1)
    make_folds(root / "data", n_folds=2, seed=0).to_csv(root / "folds.csv", index=False)
    prepare(root / "data", root / "cache", workers=1)
    assert train.main(train_args(root)) == 0
    return root


@pytest.fixture
def work(base, tmp_path) -> Path:
    """A copy of `base` whose run configs name the copy's folders (so --resume sees the same config)."""
    shutil.copytree(base, tmp_path / "w")
    for path in (tmp_path / "w" / "runs").rglob("config.json"):
        path.write_text(path.read_text().replace(str(base), str(tmp_path / "w")))
    return tmp_path / "w"


def train_args(root: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(root / "data"), "--cache-dir", str(root / "cache"), "--folds-csv", str(root / "folds.csv"),
            "--out", str(root / "runs"), "--name", "unet", "--arch", "unet_tiny", "--img-size", "64",
            "--batch-size", "4", "--epochs", "2", "--workers", "0", "--device", "cpu", "--lr", "3e-3",
            "--fold", "0", *extra]


def config(root: Path, **overrides) -> Seg2DConfig:
    values = dict(data_dir=str(root / "data"), cache_dir=str(root / "cache"), folds_csv=str(root / "folds.csv"),
                  out=str(root / "runs"), name="unet", arch="unet_tiny", img_size=64, batch_size=4, epochs=2,
                  workers=0, device="cpu", lr=3e-3, fold="0")
    return Seg2DConfig(**{**values, **overrides})


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys, main, argv) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: "), err
    return err.strip()


def predict_oof(root: Path) -> dict[str, bytes]:
    """src.predict of the unet run's OOF split; its prediction files."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(predict.main, ["--run", str(root / "runs" / "unet"), "--cache-dir", str(root / "cache"),
                               "--data-dir", str(root / "data"), "--device", "cpu", "--split", "oof"])
    assert exit_info.value.code == 0
    return snapshot(root / "runs" / "unet" / "pred_oof")


def test_a_finished_training_records_its_fold_in_the_run(base):
    """The record that makes a completed fold that later disappears an error (src.inference.runs)."""
    assert RunDir(base / "runs" / "unet").completed_folds() == ["0"]


# ---- --device ----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", BAD_DEVICES)
def test_a_bad_device_is_one_line_before_anything(device, tmp_path, capsys):
    """train, predict and submit refuse the value up front: no run folder, cache or file is written."""
    commands = {
        train: ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "runs"), "--device", device],
        predict: ["--run", str(tmp_path / "runs" / "x"), "--device", device],
        submit: ["--ensemble", str(tmp_path / "e.json"), "--data-dir", str(tmp_path / "data"),
                 "--out", str(tmp_path / "sub.csv"), "--device", device],
    }
    for module, argv in commands.items():
        line = one_error_line(capsys, module.main, argv)
        assert line.startswith((f"error: --device {device}: ", f"error: --device '{device}': "))
        assert BAD_DEVICES[device] in line, (module.__name__, line)
    assert list(tmp_path.iterdir()) == []


def test_the_options_check_the_device_name_and_leave_the_machine_to_the_command(monkeypatch):
    """select_device runs once, at the start of predict_run / submit; the options only read the name."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert PredictOptions(run=Path("r"), device="cuda:7").device == "cuda:7"
    assert SubmitOptions(ensemble=Path("e.json"), data_dir=Path("d"), device="cuda:7").device == "cuda:7"
    for make in (lambda: PredictOptions(run=Path("r"), device="gpu0"),
                 lambda: SubmitOptions(ensemble=Path("e.json"), data_dir=Path("d"), device="gpu0")):
        with pytest.raises(DataError, match=f"--device gpu0: {DEVICE_NAMES}"):
            make()


def test_select_device_checks_the_index_against_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_device("cuda:1") == torch.device("cuda", 1) and select_device("auto") == torch.device("cuda")
    with pytest.raises(DataError, match=r"--device cuda:2: no such CUDA device \(this machine has 2"):
        select_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu") and select_device("cpu") == torch.device("cpu")
    with pytest.raises(DataError, match="--device cuda: no CUDA device is available"):
        select_device("cuda")


# ---- a re-train never destroys the finished fold -------------------------------------------------
def test_a_retrain_with_bad_encoder_weights_leaves_the_fold_intact(work, capsys):
    fold = fold_dir(work / "runs", "unet", 0)
    before = snapshot(fold.path)
    line = one_error_line(capsys, train.main, train_args(work, "--encoder-weights", str(work / "none.pth")))
    assert "none.pth: encoder weights file not found" in line
    assert snapshot(fold.path) == before and not fold.staging.path.exists()


def test_a_retrain_killed_mid_training_leaves_the_fold_intact_and_used_by_predict(work):
    fold = fold_dir(work / "runs", "unet", 0)
    before, predicted = snapshot(fold.path), predict_oof(work)
    proc = subprocess.Popen([sys.executable, "-m", "src.train", *train_args(work, "--epochs", "3")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 1800  # a loaded machine can take minutes to the first epoch
    while not fold.staging.last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    alive = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    assert alive and fold.staging.last.exists(), f"no epoch saved before the kill: {proc.stderr.read()[-2000:]!r}"
    proc.wait()
    proc.stderr.close()
    assert snapshot(fold.path) == before and fold.staging.last.is_file()
    assert predict_oof(work) == predicted  # the old fold's weights, as before the re-train
    assert plan_training(fold, config(work, epochs=3), resume=True) is Plan.CONTINUE


def test_a_retrain_failing_mid_training_keeps_the_fold_then_resume_replaces_it(work):
    fold = fold_dir(work / "runs", "unet", 0)
    before = snapshot(fold.path)
    cfg = config(work, epochs=3)
    fit_until_killed(Trainer(Seg2DTask(cfg, cfg.cache_dir), VolumeCache(work / "cache").case_days()))
    assert snapshot(fold.path) == before
    assert json.loads(fold.staging.config_path.read_text())["config"]["epochs"] == 3
    assert train.main(train_args(work, "--epochs", "3", "--resume")) == 0
    assert not fold.staging.path.exists() and fold.read_done()["epochs_run"] == 3
    assert list(fold.read_log()["epoch"]) == [0, 1, 2]  # continued after the saved epoch


def test_a_fresh_retrain_discards_a_leftover_staging_folder(work):
    fold = fold_dir(work / "runs", "unet", 0)
    shutil.copytree(fold.path, fold.staging.path)  # e.g. an old fold left there by a kill inside the swap
    (fold.staging.path / "stray.txt").write_text("x")
    assert plan_training(fold, config(work), resume=True) is Plan.DONE  # a staging folder with done.json is never continued
    assert train.main(train_args(work, "--epochs", "1")) == 0
    assert not fold.staging.path.exists() and not (fold.path / "stray.txt").exists()
    assert fold.read_done()["epochs_run"] == 1


def test_resume_continues_a_fold_trained_in_place_by_older_code(work):
    """Older code trained inside fold<k>/: an unfinished one (last.pt, no done.json) still resumes."""
    fold = fold_dir(work / "runs", "unet", 0)
    shutil.rmtree(fold.path)
    cfg = config(work)
    fit_until_killed(Trainer(Seg2DTask(cfg, cfg.cache_dir), VolumeCache(work / "cache").case_days()))
    fold.staging.path.rename(fold.path)
    assert plan_training(fold, cfg, resume=True) is Plan.ADOPT
    assert train.main(train_args(work, "--resume")) == 0
    assert fold.read_done()["epochs_run"] == 2 and list(fold.read_log()["epoch"]) == [0, 1]
    assert not fold.staging.path.exists()


def test_resume_of_a_done_fold_returns_its_score_untouched(work):
    fold = fold_dir(work / "runs", "unet", 0)
    before = snapshot(fold.path)
    assert train.main(train_args(work, "--resume")) == 0
    assert snapshot(fold.path) == before and not fold.staging.path.exists()


def test_a_resume_state_of_other_code_is_one_line(work, capsys):
    fold = fold_dir(work / "runs", "unet", 0)
    shutil.copytree(fold.path, fold.staging.path)
    (fold.staging.done_path).unlink()
    ckpt = torch.load(fold.staging.last, weights_only=True)
    ckpt["state"] = {"epoch": 1}
    torch.save(ckpt, fold.staging.last)
    before = snapshot(fold.path)
    line = one_error_line(capsys, train.main, train_args(work, "--resume"))
    assert "fold0.staging/last.pt: not a resume state of this trainer" in line and "without --resume" in line
    assert snapshot(fold.path) == before


# ---- one writer per fold -----------------------------------------------------------------------
def test_a_second_training_of_a_locked_fold_names_the_holder(work, capsys):
    fold = fold_dir(work / "runs", "unet", 0)
    before = snapshot(fold.path)
    with exclusive_lock(fold.lock_path, "test"):
        line = one_error_line(capsys, train.main, train_args(work))
    assert "fold0.lock: fold 0 of run unet is being written by pid" in line and f"pid {os.getpid()} " in line
    assert snapshot(fold.path) == before and not fold.staging.path.exists()
    assert train.main(train_args(work, "--epochs", "1")) == 0  # released: the next training runs


HOLD = """
import sys, time
from src.core.lock import exclusive_lock
with exclusive_lock(sys.argv[1], "the thing"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path):
    path = tmp_path / "a" / "x.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(DataError, match=rf"x.lock: the thing is being written by pid {proc.pid} on .*-c {path}"):
            with exclusive_lock(path, "the thing"):
                pass
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    with exclusive_lock(path, "the thing"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert path.read_text() == ""  # released: no holder named any more


# ---- the training state ------------------------------------------------------------------------
def test_training_state_counts_improvements_and_patience():
    state = TrainingState()
    assert state.observe(0, 0.5) and not state.observe(1, 0.4) and not state.observe(2, math.nan)
    assert (state.best_score, state.best_epoch, state.bad_epochs) == (0.5, 0, 2)
    assert state.stops(2) and not state.stops(3) and not state.stops(0)
    assert state.observe(3, 0.6) and state.bad_epochs == 0
    assert TrainingState.from_dict(state.to_dict(), "x") == state
    old = {"epoch": 3, "best_score": 0.6, "best_epoch": 3, "bad_epochs": 0}  # last.pt of the code before it
    assert TrainingState.from_dict(old, "x") == TrainingState(3, 0.6, 3, 0)
    with pytest.raises(DataError, match="last.pt: not a resume state"):
        TrainingState.from_dict({"epoch": 1}, "last.pt")

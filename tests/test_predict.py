"""Prediction of trained runs: OOF by the fold that did not see a case-day, test as the fold mean,
flip TTA, gates, errors. `trained_runs` (also used by test_submit) trains two tiny runs once per session."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from src.core.errors import DataError
from src.data.folds import make_folds
from src.data.preparation import prepare
from src.data.synthetic import generate
from src.data.volumes import VolumeCache
from src.ensembling.ensemble_file import AuxiliaryRun
from src.ensembling.tune import TuneOptions, tune
from src.inference.predict import PredictOptions, RunPredictor, predict_run
from src.inference.runs import TrainedRun
from src.inference.tta import flip_volume, predict_tta
from src.predict import main
from src.train import main as train_main

CPU = torch.device("cpu")
RUNS = {"unet": ("seg2d", "unet_tiny", "01"), "fpn": ("seg2d", "fpn_tiny", "01"), "cls": ("cls", "cls_tiny", "0")}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions run faster on one thread on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_trained_runs(root: Path) -> Path:
    """Synthetic data (2 train cases, 1 test case), 2 folds, 2 tiny seg2d runs and a classifier (fold 0 only),
    1 epoch each; built once per root."""
    if (root / "ready").exists():
        return root
    generate(root / "data", cases=2, seed=0, test_cases=1, sizes=[(72, 64)], slices=[8], workers=1)
    make_folds(root / "data", n_folds=2, seed=0).to_csv(root / "folds.csv", index=False)
    prepare(root / "data", root / "cache", workers=1)
    for name, (stage, arch, folds) in RUNS.items():
        for fold in folds:
            train_main(["--stage", stage, "--data-dir", str(root / "data"), "--cache-dir", str(root / "cache"),
                        "--folds-csv", str(root / "folds.csv"), "--out", str(root / "runs"), "--name", name,
                        "--arch", arch, "--img-size", "64", "--batch-size", "8", "--epochs", "1", "--workers", "0",
                        "--device", "cpu", "--lr", "1e-2", "--augment", "none", "--fold", fold])
    (root / "ready").touch()
    return root


def gated_plain_mean(root: Path, out: Path, runs: list[Path], gate: Path) -> dict:
    """The ensemble file of the plain mean of `runs` gated by `gate` (thresholds 0.3), written to `out`
    and returned: the tuner itself would not keep one-epoch members or their gate (its final choice),
    and the submission and bundle tests need every kind of run in the file."""
    tune(TuneOptions(runs=runs, gate=gate, out=out, cache_dir=root / "cache", holdout_folds=[], passes=0),
         log=lambda line: None)
    record = json.loads(out.read_text())
    record["params"]["gate_threshold"] = [0.3, 0.3, 0.3]
    record["gate"] = str(gate)
    record["auxiliary"].append(AuxiliaryRun.of(TrainedRun.load(gate)).to_dict())
    out.write_text(json.dumps(record))
    return record


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread) -> Path:
    return build_trained_runs(tmp_path_factory.getbasetemp() / "trained_runs")


def _args(root: Path, run: str, *extra: str) -> list[str]:
    return ["--run", str(root / "runs" / run), "--cache-dir", str(root / "cache"), "--data-dir", str(root / "data"),
            "--device", "cpu", *extra]


def test_oof_uses_the_fold_model_that_did_not_see_the_case_day(trained):
    assert main(_args(trained, "unet", "--split", "oof")) == 0
    out = trained / "runs" / "unet" / "pred_oof"
    manifest = json.loads((out / "predict.json").read_text())
    cache = VolumeCache(trained / "cache")
    assert sorted(manifest["case_days"]) == sorted(cache.case_days("train")) and manifest["folds"] == ["0", "1"]
    for cd in manifest["case_days"]:
        pred = np.load(out / f"{cd}.npy")
        vol = cache.load(cd)
        assert pred.dtype == np.float16 and pred.shape == (vol.shape[0], 3, *vol.shape[1:])
        training_oof = next((trained / "runs" / "unet").glob(f"fold*/oof/{cd}.npy"))
        np.testing.assert_allclose(pred.astype(np.float32), np.load(training_oof).astype(np.float32), atol=2e-3)


def test_test_split_is_the_mean_of_the_fold_models(trained, tmp_path):
    run = trained / "runs" / "fpn"
    both = predict_run(PredictOptions(run=run, split="test", data_dir=trained / "data", cache_dir=trained / "cache",
                                      device="cpu"))
    singles = [predict_run(PredictOptions(run=run, split="test", folds=f, data_dir=trained / "data",
                                          cache_dir=trained / "cache", out=tmp_path / f"fold{f}", device="cpu"))
               for f in ("0", "1")]
    cache = VolumeCache(trained / "cache")
    case_days = json.loads((both / "predict.json").read_text())["case_days"]
    assert case_days == cache.case_days("test") and case_days
    for cd in case_days:
        mean = np.load(both / f"{cd}.npy")
        assert mean.dtype == np.float16 and mean.shape == (cache.load(cd, "test").shape[0], 3, 64, 72)
        parts = [np.load(s / f"{cd}.npy").astype(np.float32) for s in singles]
        np.testing.assert_allclose(mean.astype(np.float32), (parts[0] + parts[1]) / 2, atol=2e-3)


def test_flip_tta_averages_flipped_predictions_and_is_flip_equivariant(trained):
    cache = VolumeCache(trained / "cache")
    vol = cache.load(cache.case_days("train")[0])
    plain = RunPredictor(TrainedRun.load(trained / "runs" / "unet"), "0", "oof", (), CPU)
    fold = plain.folds[0]
    direct = fold.predict(vol)
    mirrored = np.flip(fold.predict(flip_volume(vol, -1)), -1)
    assert np.abs(direct - mirrored).max() > 1e-3  # the model alone is not flip-symmetric ...
    tta = predict_tta(fold, vol, ("hflip",))
    np.testing.assert_allclose(tta, (direct + mirrored) / 2, atol=1e-6)
    both = predict_tta(fold, vol, ("hflip", "vflip"))
    upside = np.flip(fold.predict(flip_volume(vol, -2)), -2)
    np.testing.assert_allclose(both, (direct + mirrored + upside) / 3, atol=1e-6)
    # ... but its TTA prediction of the mirrored volume is the mirrored TTA prediction
    # (up to the intensity window, computed on a pixel subsample that mirroring shifts)
    tta_of_mirror = predict_tta(fold, flip_volume(vol, -1), ("hflip",))
    assert np.abs(np.flip(tta_of_mirror, -1) - tta).max() < 0.1 * np.abs(direct - mirrored).max() + 1e-3


def test_gates_zero_the_slices_they_mark_empty(trained, tmp_path):
    run, cls = trained / "runs" / "unet", trained / "runs" / "cls"
    # the gate: (Z, 3) presence
    predict_run(PredictOptions(run=cls, split="oof", cache_dir=trained / "cache", device="cpu"))
    case_days = json.loads((cls / "pred_oof" / "predict.json").read_text())["case_days"]
    presence = {cd: np.load(cls / "pred_oof" / f"{cd}.npy") for cd in case_days}
    assert all(p.dtype == np.float16 and p.shape == (8, 3) for p in presence.values())
    threshold = float(np.median(np.concatenate(list(presence.values()))))
    gated = predict_run(PredictOptions(run=run, split="oof", folds="0", cache_dir=trained / "cache",
                                       out=tmp_path / "gated", device="cpu", gate=cls, gate_threshold=threshold))
    for cd in case_days:
        plain = np.load(next(run.glob(f"fold*/oof/{cd}.npy")))  # the ungated OOF
        after, kept = np.load(gated / f"{cd}.npy"), presence[cd] >= threshold
        assert not after[~kept].any()
        np.testing.assert_allclose(after[kept].astype(np.float32), plain[kept].astype(np.float32), atol=2e-3)
    assert 0 < sum(int((p >= threshold).sum()) for p in presence.values()) < sum(p.size for p in presence.values())
    ruled = predict_run(PredictOptions(run=run, split="oof", folds="0", cache_dir=trained / "cache",
                                       out=tmp_path / "ruled", device="cpu",
                                       gate_rule="100000:0.5"))  # no slice has that many pixels
    assert all(not np.load(ruled / f"{cd}.npy").any() for cd in case_days)


def test_bad_requests_are_one_line_errors(trained):
    with pytest.raises(DataError, match="no trained fold 7"):
        main(_args(trained, "unet", "--folds", "7"))
    with pytest.raises(DataError, match="no trained fold all"):
        main(_args(trained, "unet", "--folds", "all", "--split", "test"))
    with pytest.raises(DataError, match="--tta"):
        main(_args(trained, "unet", "--tta", "rot90"))
    with pytest.raises(DataError, match="run folder not found"):
        main(_args(trained, "nothing"))
    with pytest.raises(DataError, match="no test prediction"):
        main(_args(trained, "fpn", "--split", "test", "--gate", str(trained / "runs" / "unet")))


def test_batched_tta_equals_one_flip_after_the_other(trained):
    """TTA flips stacked into shared forward passes (the CUDA default) give the sequential result."""
    cache = VolumeCache(trained / "cache")
    vol = cache.load(cache.case_days("train")[0])
    fold = RunPredictor(TrainedRun.load(trained / "runs" / "unet"), "0", "oof", (), CPU).folds[0]
    box = [4, 60, 6, 66]
    for tta in (("hflip",), ("hflip", "vflip")):
        for b in (None, box):
            sequential = predict_tta(fold, vol, tta, b, batch_size=3)
            batched = predict_tta(fold, vol, tta, b, batch_size=3, batched=True)
            np.testing.assert_allclose(batched, sequential, atol=1e-5)
    predictor = RunPredictor(TrainedRun.load(trained / "runs" / "cls"), "0", "oof", ("hflip",), CPU, batch_tta=True)
    np.testing.assert_allclose(predictor.predict(vol), RunPredictor(TrainedRun.load(trained / "runs" / "cls"), "0", "oof", ("hflip",),
                                                                    CPU).predict(vol), atol=1e-6)
    assert not fold.autocast and not fold.offload and RunPredictor(TrainedRun.load(trained / "runs" / "unet"), "0").batch_tta is False

"""2.5D training end to end on a tiny synthetic dataset: artifacts, options, resume, fold all, DDP."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import fit_until_killed

from src.core.errors import DataError
from src.data.folds import make_folds
from src.data.preparation import prepare
from src.data.synthetic import generate
from src.data.volumes import VolumeCache
from src.engine.config import Seg2DConfig
from src.engine.seg2d import Seg2DTask
from src.engine.trainer import Trainer
from src.metrics.competition import score_volumes
from src.train import main


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    generate(root / "data", cases=4, seed=0, sizes=[(72, 64), (64, 64)], slices=[12, 10], workers=1)
    make_folds(root / "data", n_folds=2, seed=0).to_csv(root / "folds.csv", index=False)
    prepare(root / "data", root / "cache", workers=1)
    return root


def base_args(work, name, *extra):
    return ["--data-dir", str(work / "data"), "--cache-dir", str(work / "cache"), "--folds-csv",
            str(work / "folds.csv"), "--out", str(work / "runs"), "--name", name, "--arch", "unet_tiny",
            "--img-size", "64", "--batch-size", "4", "--epochs", "1", "--workers", "0", "--device", "cpu",
            "--lr", "3e-3", *extra]


def config(work, name, **overrides) -> Seg2DConfig:
    values = dict(data_dir=str(work / "data"), cache_dir=str(work / "cache"), folds_csv=str(work / "folds.csv"),
                  out=str(work / "runs"), name=name, arch="unet_tiny", img_size=64, batch_size=4, epochs=2,
                  workers=0, device="cpu", lr=3e-3)
    return Seg2DConfig(**{**values, **overrides})


def test_one_epoch_run_writes_every_artifact(work):
    assert main(base_args(work, "basic", "--fold", "0")) == 0
    run = work / "runs" / "basic" / "fold0"
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["arch"] == "unet_tiny" and saved["seed"] == 42
    folds = pd.read_csv(work / "folds.csv")
    val = sorted(folds.loc[folds.fold == 0, "case_day"])
    assert sorted(saved["val_case_days"]) == val and not set(val) & set(saved["train_case_days"])
    cache = VolumeCache(work / "cache")
    pairs = []
    for cd in val:
        oof = np.load(run / "oof" / f"{cd}.npy")
        vol = cache.load(cd)
        assert oof.dtype == np.float16 and oof.shape == (vol.shape[0], 3) + vol.shape[1:]
        assert 0 <= oof.min() and oof.max() <= 1
        pairs.append((cd, oof > 0.5, np.asarray(vol.mask) > 0))
    log = pd.read_csv(run / "log.csv")
    assert list(log["epoch"]) == [0] and {"train_loss", "val_score", "val_dice", "val_hausdorff", "lr"} <= set(log)
    assert abs(score_volumes(pairs).score - log["val_score"].iloc[0]) < 1e-3  # OOF files are the scored ones
    assert json.loads((run / "done.json").read_text())["epochs_run"] == 1
    assert set(pd.read_csv(run / "oof_scores.csv")["case_day"]) == set(val)
    assert torch.load(run / "best.pt", weights_only=True)["model"]


def test_resume_ends_with_the_same_weights(work):
    straight = config(work, "straight", augment="strong", workers=1)
    Trainer(Seg2DTask(straight, straight.cache_dir), VolumeCache(work / "cache").case_days()).fit()
    killed = config(work, "killed", augment="strong", workers=1)
    fit_until_killed(Trainer(Seg2DTask(killed, killed.cache_dir), VolumeCache(work / "cache").case_days()))
    assert not (work / "runs" / "killed" / "fold0" / "done.json").exists()
    assert main(base_args(work, "killed", "--epochs", "2", "--augment", "strong", "--workers", "1", "--resume")) == 0
    a = torch.load(work / "runs" / "straight" / "fold0" / "last.pt", weights_only=True)["model"]
    b = torch.load(work / "runs" / "killed" / "fold0" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [pd.read_csv(work / "runs" / n / "fold0" / "log.csv") for n in ("straight", "killed")]
    assert np.allclose(logs[0]["val_score"], logs[1]["val_score"]) and len(logs[1]) == 2


def test_resume_refuses_a_changed_config(work):
    main(base_args(work, "changing", "--fold", "1"))
    with pytest.raises(DataError, match="changed: lr"):
        main(base_args(work, "changing", "--fold", "1", "--lr", "1e-4", "--resume"))


def test_training_options_together(work):
    excluded = VolumeCache(work / "cache").case_days()[0]
    cfg = config(work, "options", epochs=1, channels=5, stride=1, geometry="letterbox", loss="tversky:1,focal:0.5",
                 aux_weight=0.3, ema=0.9, accum_steps=2, channels_last=True, schedule="poly", positive_only=True,
                 tail_drop=2, exclude=excluded, warmup_epochs=0.5)
    score = Trainer(Seg2DTask(cfg, cfg.cache_dir), VolumeCache(work / "cache").case_days()).fit()
    run = work / "runs" / "options" / "fold0"
    saved = json.loads((run / "config.json").read_text())
    assert excluded not in saved["train_case_days"] + saved["val_case_days"]
    best = torch.load(run / "best.pt", weights_only=True)["model"]
    raw = torch.load(run / "last.pt", weights_only=False)["model"]
    assert any(k.startswith("classification_head") for k in raw)  # the presence head
    ema_weights = {k.removeprefix("module."): v for k, v in best.items() if k != "n_averaged"}
    assert not all(torch.equal(ema_weights[k], raw[k]) for k in raw)  # best.pt holds the EMA weights
    assert 0.0 <= score <= 1.0


def test_bn_momentum_reaches_every_batchnorm(work):
    case_days = VolumeCache(work / "cache").case_days()
    momenta = {}
    for value in (0.0, 0.3):
        cfg = config(work, f"bn{value}", bn_momentum=value)
        model, _, _ = Trainer(Seg2DTask(cfg, cfg.cache_dir), case_days)._build()
        momenta[value] = {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta[0.3] == {0.3} and 0.3 not in momenta[0.0]  # 0 keeps the architecture's own


def test_val_every_validates_every_nth_epoch_and_the_last(work):
    assert main(base_args(work, "sparse", "--fold", "0", "--epochs", "3", "--val-every", "2")) == 0
    log = pd.read_csv(work / "runs" / "sparse" / "fold0" / "log.csv")
    assert list(log["epoch"]) == [0, 1, 2]
    assert log["val_score"].isna().tolist() == [True, False, False]  # epoch 2 (after 2) and the last
    done = json.loads((work / "runs" / "sparse" / "fold0" / "done.json").read_text())
    assert done["best_epoch"] in (1, 2) and done["best_score"] == log["val_score"].max()
    with pytest.raises(DataError, match="--val-every 0"):
        config(work, "bad", val_every=0)


def test_fold_all_fits_everything_without_validation(work):
    assert main(base_args(work, "full", "--fold", "all")) == 0
    run = work / "runs" / "full" / "foldall"
    saved = json.loads((run / "config.json").read_text())
    assert saved["val_case_days"] == [] and len(saved["train_case_days"]) == len(VolumeCache(work / "cache").case_days())
    assert (run / "best.pt").exists() and not (run / "oof").exists()


def test_bad_arguments_are_one_line_errors(work):
    cmd = [sys.executable, "-m", "src.train", *base_args(work, "bad", "--arch", "unet_r19")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --arch: unknown arch 'unet_r19'")
    assert len(proc.stderr.strip().splitlines()) == 1
    with pytest.raises(DataError, match="has no fold 7"):
        main(base_args(work, "bad", "--fold", "7"))
    with pytest.raises(DataError, match="unknown loss"):
        main(base_args(work, "bad", "--loss", "bce:1,iou:1"))


def test_list_archs_prints_parameter_counts():
    proc = subprocess.run([sys.executable, "-m", "src.train", "--list-archs", "--stage", "seg2d"],
                          capture_output=True, text=True, check=True)
    row = next(line for line in proc.stdout.splitlines() if line.startswith("unet_tiny "))
    assert row.split()[2].endswith("M") and float(row.split()[2][:-1]) > 0.5


def test_ddp_two_cpu_processes_match_one_process(work):
    # Three epochs: after one, a tiny net's thresholded score still flips between all-empty and
    # all-full on small differences (per-process BatchNorm statistics on gloo).
    single = config(work, "single", epochs=3, augment="none", batch_size=4)
    Trainer(Seg2DTask(single, single.cache_dir), VolumeCache(work / "cache").case_days()).fit()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "src.train", *base_args(work, "ddp", "--augment", "none", "--epochs", "3")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = work / "runs" / "ddp" / "fold0"
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    log_ddp, log_single = (pd.read_csv(work / "runs" / n / "fold0" / "log.csv") for n in ("ddp", "single"))
    assert abs(log_ddp["val_score"].max() - log_single["val_score"].max()) < 0.1


def test_optimizer_is_chosen_by_name_and_checked():
    from src.engine.trainer import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    kinds = {name: type(make_optimizer(Seg2DConfig(optimizer=name, lr=0.1), params)).__name__
             for name in ("adamw", "adam", "sgd")}
    assert kinds == {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}
    with pytest.raises(DataError, match="--optimizer 'lion': expected one of adamw, adam, sgd"):
        Seg2DConfig(optimizer="lion")


def test_balanced_sampling_draws_positive_and_empty_slices_equally():
    from types import SimpleNamespace

    from src.engine.distributed import DistInfo
    from src.engine.trainer import _epoch_order

    dataset = SimpleNamespace(positive=np.array([True] * 10 + [False] * 90))
    cfg = Seg2DConfig(balanced=True, samples_per_epoch=4000)
    weights = Trainer._sample_weights(SimpleNamespace(cfg=cfg), dataset)
    order = _epoch_order(cfg, 100, 0, DistInfo(), weights)
    share = dataset.positive[order].mean()
    assert len(order) == 4000 and 0.45 < share < 0.55  # 10 % of the slices, half of the draws
    assert order == _epoch_order(cfg, 100, 0, DistInfo(), weights)  # seeded
    assert Trainer._sample_weights(SimpleNamespace(cfg=Seg2DConfig()), dataset) is None

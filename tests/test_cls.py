"""Empty-slice gate: the cls stage end to end, presence metrics, the segmenter-as-classifier rule, the report."""
import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import save_file

from src.cls_report import main as report_main
from src.core.errors import DataError
from src.data.folds import make_folds
from src.data.layout import CLASSES
from src.data.preparation import prepare
from src.data.synthetic import generate
from src.data.volumes import VolumeCache, read_meta, write_case_day
from src.engine.cls import ClsTask
from src.engine.config import ClsConfig
from src.inference.gating import pixel_gate
from src.metrics.presence import presence_score, presence_table, slice_presence
from src.models.registry import create_model, list_archs
from src.models.weights import load_encoder_weights
from src.train import main

EMPTY = "case999_day0"


def add_empty_case_day(root, fold: int) -> None:
    """A validation case-day whose truth has no organ at all (the image of another case-day)."""
    cache = VolumeCache(root / "cache")
    donor = cache.load(cache.case_days()[0])
    ids = [i.replace(donor.case_day, EMPTY) for i in donor.ids]
    meta = {**read_meta(root / "cache", "train", donor.case_day), "case": 999, "day": 0, "case_day": EMPTY, "ids": ids}
    write_case_day(root / "cache", "train", EMPTY, np.asarray(donor.image), np.zeros_like(donor.mask), meta)
    folds = pd.read_csv(root / "folds.csv")
    row = {"case": 999, "day": 0, "case_day": EMPTY, "fold": fold, "n_slices": len(ids), "n_positive_slices": 0}
    pd.concat([folds, pd.DataFrame([row])]).to_csv(root / "folds.csv", index=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    generate(root / "data", cases=3, seed=1, sizes=[(72, 64), (64, 64)], slices=[12, 10], workers=1)
    make_folds(root / "data", n_folds=2, seed=0).to_csv(root / "folds.csv", index=False)
    prepare(root / "data", root / "cache", workers=1)
    add_empty_case_day(root, fold=0)
    return root


def cls_args(work, name, *extra):
    return ["--stage", "cls", "--data-dir", str(work / "data"), "--cache-dir", str(work / "cache"),
            "--folds-csv", str(work / "folds.csv"), "--out", str(work / "runs"), "--name", name, "--arch", "cls_tiny",
            "--img-size", "64", "--batch-size", "8", "--epochs", "1", "--samples-per-epoch", "16", "--workers", "0",
            "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def cls_run(work):
    assert main(cls_args(work, "gate", "--fold", "0")) == 0
    return work / "runs" / "gate" / "fold0"


def test_cls_run_saves_per_slice_presence_oof(work, cls_run):
    saved = json.loads((cls_run / "config.json").read_text())
    assert saved["config"]["stage"] == "cls" and saved["config"]["loss"] == "bce"
    assert EMPTY in saved["val_case_days"]
    cache = VolumeCache(work / "cache")
    probs, truth = [], []
    for cd in saved["val_case_days"]:
        oof = np.load(cls_run / "oof" / f"{cd}.npy")
        vol = cache.load(cd)
        assert oof.dtype == np.float16 and oof.shape == (vol.shape[0], 3)
        assert 0 <= oof.min() and oof.max() <= 1
        probs.append(oof.astype(np.float32))
        truth.append(slice_presence(vol.mask))
    assert not truth[saved["val_case_days"].index(EMPTY)].any()
    log = pd.read_csv(cls_run / "log.csv")
    assert {"val_score", *(f"val_{m}_{c}" for m in ("ap", "precision", "recall") for c in CLASSES)} <= set(log)
    table = presence_table(np.concatenate(probs), np.concatenate(truth))
    assert abs(presence_score(table) - log["val_score"].iloc[0]) < 1e-3  # the saved OOF is what was scored
    per_case = pd.read_csv(cls_run / "oof_scores.csv").set_index("case_day")
    assert per_case.loc[EMPTY, "positives"] == 0
    assert json.loads((cls_run / "done.json").read_text())["epochs_run"] == 1


def test_presence_table_and_score():
    truth = np.zeros((6, 3), bool)
    truth[:3, 0] = True
    truth[2:, 1] = True  # class 2 (stomach) never present
    probs = np.where(truth, 0.9, 0.1).astype(np.float32)
    probs[5, 2] = 0.7  # one false positive on the absent class
    table = presence_table(probs, truth, threshold=0.5).set_index("class")
    assert table.loc["large_bowel", ["ap", "precision", "recall", "f1"]].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert np.isnan(table.loc["stomach", "ap"]) and np.isnan(table.loc["stomach", "recall"])
    assert table.loc["stomach", "tnr"] == pytest.approx(5 / 6)
    assert presence_score(table.reset_index()) == pytest.approx((1 + 1 + 5 / 6) / 3)
    probs[0, 0] = 0.05  # a missed positive ranked below every negative
    worse = presence_table(probs, truth, threshold=0.5)
    assert worse.loc[0, "recall"] == pytest.approx(2 / 3) and worse.loc[0, "ap"] < 1


def test_the_pixel_gate_is_the_pixel_count_rule():
    probs = np.zeros((2, 3, 8, 8), np.float32)
    probs[0, 0].flat[:13] = 0.7  # 13 pixels above 0.6
    probs[1, 0].flat[:12] = 0.7  # 12: not more than 12
    probs[0, 1].flat[:40] = 0.55  # many, but below 0.6
    present = pixel_gate(probs, [12] * 3, [0.6] * 3)
    assert present.shape == (2, 3) and present.tolist() == [[True, False, False], [False, False, False]]
    assert pixel_gate(probs, [12, 5, 0], [0.6, 0.5, 0.6])[0].tolist() == [True, True, False]


def test_classifier_prediction_with_a_crop_box(work, cls_run):
    cfg = ClsConfig(**json.loads((cls_run / "config.json").read_text())["config"])
    task = ClsTask(cfg, work / "cache")
    model = task.build_model()
    model.load_state_dict(torch.load(cls_run / "best.pt", weights_only=True)["model"])
    vol = VolumeCache(work / "cache").load(EMPTY)
    with torch.no_grad():
        whole = task.predict_volume(model.eval(), vol, torch.device("cpu"))
        cropped = task.predict_volume(model, vol, torch.device("cpu"), box=(8, 40, 4, 50), batch_size=3)
    stored = np.load(cls_run / "oof" / f"{EMPTY}.npy")
    assert np.allclose(whole, stored, atol=1e-3) and cropped.shape == whole.shape and not np.allclose(cropped, whole)


def test_local_timm_weights_load_into_the_classifier_backbone(tmp_path):
    donor = timm.create_model("mobilenetv3_small_050", pretrained=False)  # with its 1000-class ImageNet head
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model = create_model("cls_tiny", in_channels=5, classes=3)
    head = model.head[1].weight.clone()
    assert load_encoder_weights(model, tmp_path / "w.safetensors") > 100
    assert torch.allclose(model.encoder.conv_stem.weight[:, :3] * 5 / 3, donor.conv_stem.weight)
    assert torch.equal(model.encoder.conv_head.weight, donor.conv_head.weight) and torch.equal(model.head[1].weight, head)
    assert model(torch.zeros(2, 5, 64, 64)).shape == (2, 3)


def test_bad_classifier_configs_are_one_line_errors(work):
    with pytest.raises(DataError, match="is a seg2d arch"):
        main(cls_args(work, "bad", "--arch", "unet_tiny"))
    with pytest.raises(DataError, match="do not apply to a classifier"):
        main(cls_args(work, "bad", "--positive-only"))


def test_the_classifiers_are_registered_for_list_archs():
    names = {a.name for a in list_archs(stage="cls")}
    assert {"cls_tiny", "cls_r18", "cls_r34", "cls_effb0", "cls_effb4", "cls_effv2s", "cls_convnext_t"} <= names


def test_cls_report_writes_curve_and_table(work, cls_run, tmp_path):
    assert report_main(["--run", str(cls_run.parent), "--fold", "0", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "cls_report.csv").set_index("class")
    assert list(table.index) == [*CLASSES, "mean"]
    saved = json.loads((cls_run / "config.json").read_text())["val_case_days"]
    truth = np.concatenate([slice_presence(VolumeCache(work / "cache").load(cd).mask) for cd in saved])
    assert table.loc[list(CLASSES), "positives"].tolist() == truth.sum(axis=0).tolist()
    log = pd.read_csv(cls_run / "log.csv")
    assert table.loc["large_bowel", "ap"] == pytest.approx(log["val_ap_large_bowel"].iloc[0], abs=1e-3)
    assert (tmp_path / "cls_pr_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(DataError, match="no trained fold 5"):
        report_main(["--run", str(cls_run.parent), "--fold", "5", "--out", str(tmp_path)])

"""Crop detector: box helpers, the YOLO dataset export, the det stage end to end with the network cut
off, fallbacks, test-time boxes, and the segmenter predicting inside a box."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from src.core.artifacts import save_prediction
from src.core.errors import DataError
from src.data.boxes import (
    body_box,
    box_area_fraction,
    box_from_xyxy,
    box_recall,
    clip_box,
    expand_box,
    mask_box,
    union_boxes,
    yolo_xywh,
)
from src.data.folds import make_folds
from src.data.preparation import prepare
from src.data.samples import StackSpec
from src.data.synthetic import generate
from src.data.volumes import VolumeCache, read_meta, write_case_day
from src.engine.config import DetConfig, Seg2DConfig
from src.engine.det import DetTask, case_day_box, export_dataset
from src.engine.seg2d import Seg2DTask
from src.inference.fold_model import FoldModel
from src.inference.predict import RunPredictor
from src.inference.runs import TrainedRun
from src.models.detector import ultralytics_offline
from src.models.registry import list_archs
from src.train import main

EMPTY = "case999_day0"
# Runs src.train with every way out to the network replaced by a recorder that raises; exit 3 if
# anything tried, after also predicting test boxes. argv: train args, then "--", run dir, cache dir.
OFFLINE_GUARD = """
import socket, sys, urllib.request
import requests
tried = []
def refuse(name):
    def fail(*args, **kwargs):
        tried.append(name)
        raise OSError(f"network is off in this test ({name})")
    return fail
socket.socket.connect = refuse("socket.connect")
socket.create_connection = refuse("socket.create_connection")
socket.getaddrinfo = refuse("socket.getaddrinfo")
urllib.request.urlopen = refuse("urllib.request.urlopen")
requests.Session.request = refuse("requests")
from pathlib import Path
from src.data.volumes import VolumeCache
from src.inference.predict import PredictOptions, predict_run
from src.inference.runs import TrainedRun
from src.train import main
split = sys.argv.index("--")
code = main(sys.argv[1:split])
run_dir, cache_dir = sys.argv[split + 1:]
predict_run(PredictOptions(Path(run_dir), "test", cache_dir=Path(cache_dir), device="cpu"))
boxes = TrainedRun.load(run_dir).predictions("test", VolumeCache(cache_dir).case_days("test"))
print("TEST_BOXES", len(boxes), "NETWORK_TRIED", tried)
sys.exit(3 if tried else code)
"""


def add_empty_case_day(root, fold: int) -> None:
    """A validation case-day whose truth has no organ at all (the image of another case-day)."""
    cache = VolumeCache(root / "cache")
    donor = cache.load(cache.case_days()[0])
    meta = {**read_meta(root / "cache", "train", donor.case_day), "case": 999, "day": 0, "case_day": EMPTY,
            "ids": [i.replace(donor.case_day, EMPTY) for i in donor.ids]}
    write_case_day(root / "cache", "train", EMPTY, np.asarray(donor.image), np.zeros_like(donor.mask), meta)
    folds = pd.read_csv(root / "folds.csv")
    row = {"case": 999, "day": 0, "case_day": EMPTY, "fold": fold, "n_slices": donor.shape[0], "n_positive_slices": 0}
    pd.concat([folds, pd.DataFrame([row])]).to_csv(root / "folds.csv", index=False)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    generate(root / "data", cases=3, seed=2, test_cases=1, sizes=[(72, 64), (64, 64)], slices=[12, 10], workers=1)
    make_folds(root / "data", n_folds=2, seed=0).to_csv(root / "folds.csv", index=False)
    prepare(root / "data", root / "cache", split="all", workers=1)
    add_empty_case_day(root, fold=0)
    return root


def det_args(work, name, *extra):
    return ["--stage", "det", "--data-dir", str(work / "data"), "--cache-dir", str(work / "cache"),
            "--folds-csv", str(work / "folds.csv"), "--out", str(work / "runs"), "--name", name, "--arch", "yolo26n",
            "--img-size", "64", "--batch-size", "8", "--epochs", "1", "--workers", "0", "--device", "cpu",
            "--slice-step", "4", *extra]


@pytest.fixture(scope="module")
def det_run(work):
    """One tiny YOLO fold trained (and test boxes predicted) in a fresh process without network,
    with a fresh ultralytics config folder."""
    run_dir = work / "runs" / "crop"
    env = {**os.environ, "YOLO_CONFIG_DIR": str(work / "yolo_config")}
    proc = subprocess.run([sys.executable, "-c", OFFLINE_GUARD, *det_args(work, "crop", "--fold", "0"), "--",
                           str(run_dir), str(work / "cache")], capture_output=True, text=True, env=env, timeout=600)
    return SimpleNamespace(proc=proc, fold=run_dir / "fold0")


def test_training_and_prediction_never_touch_the_network(work, det_run):
    out = det_run.proc.stdout + det_run.proc.stderr
    assert det_run.proc.returncode == 0, out[-3000:]
    tests = len(VolumeCache(work / "cache").case_days("test"))
    assert "NETWORK_TRIED []" in det_run.proc.stdout and f"TEST_BOXES {tests} " in det_run.proc.stdout and tests
    assert list((work / "yolo_config").rglob("Arial.ttf")) and list((work / "yolo_config").rglob("Arial.Unicode.ttf"))


def test_det_run_writes_every_artifact(work, det_run):
    fold = det_run.fold
    saved = json.loads((fold / "config.json").read_text())
    assert saved["config"]["stage"] == "det" and saved["config"]["arch"] == "yolo26n" and EMPTY in saved["val_case_days"]
    assert (fold / "yolo" / "weights" / "best.pt").is_file() and not (fold / "dataset").exists()
    task, model = load_fold_model(fold, work / "cache")  # best.pt is a plain state dict
    assert model.names == {0: "organs", 1: "body"}
    cache = VolumeCache(work / "cache")
    for cd in saved["val_case_days"]:
        crop = json.loads((fold / "oof" / f"{cd}.json").read_text())
        _, height, width = cache.load(cd).shape
        y0, y1, x0, x1 = crop["box"]
        assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width and crop["source"] in ("detected", "fallback")
    scores = pd.read_csv(fold / "oof_scores.csv").set_index("case_day")
    assert np.isnan(scores.loc[EMPTY, "crop_recall"]) and scores["crop_area"].between(0, 1).all()
    done = json.loads((fold / "done.json").read_text())
    assert done["epochs_run"] == 1 and done["best_score"] == pytest.approx(scores["detected_recall"].mean())
    assert (scores["detected_recall"].fillna(0) <= scores["crop_recall"].fillna(0)).all()
    assert len(pd.read_csv(fold / "log.csv")) == 1
    threads = torch.get_num_threads()
    predictor = RunPredictor(TrainedRun.load(fold.parent), split="oof", device=torch.device("cpu"), cache_dir=work / "cache")
    for cd in saved["val_case_days"][:1]:
        crop = predictor.predict_oof(VolumeCache(work / "cache").load(cd))
        assert crop["box"] == json.loads((fold / "oof" / f"{cd}.json").read_text())["box"]
    assert torch.get_num_threads() == threads  # ultralytics' device selection is undone
    assert main(det_args(work, "crop", "--fold", "0", "--resume")) == 0  # a finished fold is not retrained
    assert (fold / "oof").is_dir() and (fold / "done.json").read_text() == json.dumps(done, indent=2, sort_keys=True) + "\n"


def test_a_detector_finding_nothing_falls_back_to_the_whole_image(work, det_run, monkeypatch, tmp_path):
    task, model = load_fold_model(det_run.fold, work / "cache")
    empty = SimpleNamespace(boxes=SimpleNamespace(cls=torch.zeros(0), conf=torch.zeros(0), xyxy=torch.zeros(0, 4)))
    monkeypatch.setattr(DetTask, "predictor", lambda self, m, d: lambda source: [empty] * len(source))
    evaluation = task.evaluate(model, ["case999_day0", VolumeCache(work / "cache").case_days()[1]], torch.device("cpu"),
                               lambda cd, p: save_prediction(tmp_path, cd, p))
    _, height, width = VolumeCache(work / "cache").load(EMPTY).shape
    crop = json.loads((tmp_path / f"{EMPTY}.json").read_text())
    assert crop["box"] == [0, height, 0, width] and crop["source"] == "fallback" and crop["detections"] == []
    assert evaluation.metrics["val_fallback"] == 1.0 and evaluation.metrics["val_crop_recall"] == 1.0
    assert evaluation.score == 0.0 and evaluation.metrics["val_detected_recall"] == 0.0  # found nothing: scores 0
    assert evaluation.metrics["val_crop_area"] == 1.0


def test_case_day_box_prefers_organs_then_body_then_the_whole_image():
    organs = [{"z": 0, "class": "organs", "box": [10, 20, 30, 40], "conf": 0.9},
              {"z": 3, "class": "organs", "box": [15, 30, 25, 35], "conf": 0.5}]
    body = [{"z": 1, "class": "body", "box": [2, 60, 4, 70], "conf": 0.8}]
    crop = case_day_box(organs + body, 64, 72, margin=0.1, margin_px=1)
    assert crop["box"] == [10 - 3, 30 + 3, 25 - 3, 40 + 3] and crop["class"] == "organs" and crop["source"] == "detected"
    assert case_day_box(body, 64, 72, margin=0.1)["box"] == [0, 64, 0, 72] and case_day_box(body, 64, 72)["class"] == "body"
    assert case_day_box([], 64, 72) == {"box": [0, 64, 0, 72], "source": "fallback", "class": None, "detections": []}


def test_box_helpers():
    mask = np.zeros((3, 20, 30), np.uint8)
    mask[0, 2:5, 3:6] = 1
    mask[2, 10:12, 20:25] = 1
    assert mask_box(mask) == (2, 12, 3, 25) and mask_box(mask[1]) is None and mask_box(mask[None]) == (2, 12, 3, 25)
    assert union_boxes([(2, 5, 3, 6), None, (10, 12, 1, 25)]) == (2, 12, 1, 25) and union_boxes([None]) is None
    assert expand_box((10, 20, 10, 30), 25, 35, margin=0.1) == (9, 21, 8, 32)
    assert expand_box((1, 20, 10, 30), 22, 31, margin=0.0, pixels=3) == (0, 22, 7, 31)  # clipped
    assert clip_box((-4, 50, 3, 9), 40, 8) == (0, 40, 3, 8)
    assert box_from_xyxy([3.2, 1.7, 10.1, 5.0], 4, 9) == (1, 4, 3, 9)
    assert yolo_xywh((0, 10, 5, 25), 20, 40) == (15 / 40, 5 / 20, 20 / 40, 10 / 20)
    assert box_recall(mask, (2, 12, 3, 25)) == 1.0 and box_recall(mask, (0, 9, 0, 30)) == 9 / 19
    assert np.isnan(box_recall(mask[1], (0, 1, 0, 1))) and box_area_fraction((0, 10, 0, 15), 20, 30) == 0.25
    plane = np.full((40, 50), 10, np.uint8)
    cv2.ellipse(plane, (22, 20), (15, 12), 0, 0, 360, 200, -1)
    plane[1, 48] = 255  # a bright speck outside the body
    assert body_box(plane) == (8, 33, 7, 38) and body_box(np.zeros((5, 5), np.uint8)) is None


def test_dataset_export_writes_images_labels_and_yaml(work, tmp_path):
    cache = VolumeCache(work / "cache")
    labelled = next(cd for cd in cache.case_days() if cd != EMPTY and cache.load(cd).mask[3].any())
    data_yaml = export_dataset(cache, {"train": [labelled], "val": [EMPTY]}, tmp_path, StackSpec(3, 2), step=3)
    data = yaml.safe_load(data_yaml.read_text())
    assert data["names"] == {0: "organs", 1: "body"} and data["val"] == "images/val"
    vol = cache.load(labelled)
    image = cv2.imread(str(tmp_path / "images" / "train" / f"{labelled}_0003.png"), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint8 and image.shape == (*vol.shape[1:], 3)
    lines = (tmp_path / "labels" / "train" / f"{labelled}_0003.txt").read_text().splitlines()
    organs = [float(v) for v in lines[0].split()]
    assert organs[0] == 0 and np.allclose(organs[1:], yolo_xywh(mask_box(vol.mask[3]), *vol.shape[1:]), atol=1e-5)
    assert lines[1].startswith("1 ") and len(lines) == 2
    assert len(list((tmp_path / "images" / "train").glob("*.png"))) == len(range(0, vol.shape[0], 3))
    empty_labels = [p.read_text().splitlines() for p in (tmp_path / "labels" / "val").glob("*.txt")]
    assert empty_labels and all(lines and all(line.startswith("1 ") for line in lines) for lines in empty_labels)


def test_a_kept_dataset_still_resolves_after_the_staging_folder_becomes_the_fold(work, tmp_path):
    """--keep-dataset: data.yaml is written in fold0.staging/, renamed to fold0/ on commit; ultralytics
    must then read the dataset where it now is."""
    from ultralytics.data.utils import check_det_dataset  # after ultralytics_offline: never online

    ultralytics_offline()
    cache = VolumeCache(work / "cache")
    export_dataset(cache, {"train": cache.case_days()[:1], "val": []}, tmp_path / "fold0.staging" / "dataset",
                   StackSpec(3, 2), step=4)
    (tmp_path / "fold0.staging").rename(tmp_path / "fold0")
    data = check_det_dataset(str(tmp_path / "fold0" / "dataset" / "data.yaml"))
    assert data["train"] == data["val"] == str((tmp_path / "fold0" / "dataset" / "images" / "train").resolve())


@pytest.mark.parametrize("geometry", ["resize", "letterbox"])
def test_segmenter_predicts_inside_a_detector_box(work, det_run, geometry):
    cfg = Seg2DConfig(arch="unet_tiny", img_size=64, batch_size=4, geometry=geometry, device="cpu")
    task = Seg2DTask(cfg, work / "cache")
    model = task.build_model().eval()
    cd = json.loads((det_run.fold / "config.json").read_text())["val_case_days"][0]
    vol = VolumeCache(work / "cache").load(cd)
    _, height, width = vol.shape
    box = (5, height - 20, 9, width - 8)  # a crop: resized to the model input, the output pasted back
    with torch.no_grad():
        probs = task.predict_volume(model, vol, torch.device("cpu"), box=box)
    inside = np.zeros(vol.shape[1:], bool)
    inside[box[0]:box[1], box[2]:box[3]] = True
    assert probs.shape == (vol.shape[0], 3, *vol.shape[1:])
    assert not probs[:, :, ~inside].any() and (probs[:, :, inside] > 0).all()


def test_bad_detector_configs_are_one_line_errors(work):
    for extra, message in ((("--ema", "0.9"), "--ema does not apply"), (("--img-size", "70"), "multiple of 32"),
                           (("--arch", "cls_tiny"), "is a cls arch"), (("--amp",), "--amp does not apply")):
        with pytest.raises(DataError, match=message):
            main(det_args(work, "bad", *extra))
    with pytest.raises(DataError, match="takes no crop box"):
        DetTask(DetConfig(), work / "cache").predict_volume(None, None, torch.device("cpu"), box=(0, 1, 0, 1))


def test_the_detectors_are_registered_for_list_archs():
    assert {"yolo26n", "yolo26s", "yolov8n", "yolo11n"} <= {a.name for a in list_archs(stage="det")}


def load_fold_model(fold: Path, cache: Path):
    """(task, model) of a trained fold folder, loaded the way prediction loads it."""
    loaded = FoldModel.load(TrainedRun.load(fold.parent).folds[fold.name.removeprefix("fold")], torch.device("cpu"), cache)
    return loaded.task, loaded.model


def test_resume_after_a_kill_in_the_oof_step_retrains_offline(work, det_run):
    """Killed after YOLO finished but before the done marker: the resume retrains from the run's own
    data with the network unreachable (unshare -n), never ultralytics' resume or its default dataset."""
    source = det_run.fold
    killed = work / "runs" / "killed" / "fold0"
    shutil.copytree(source, killed)
    (killed / "done.json").unlink()
    shutil.rmtree(killed / "oof")
    record = json.loads((killed / "config.json").read_text())
    record["config"]["name"] = "killed"
    (killed / "config.json").write_text(json.dumps(record))
    env = {**os.environ, "YOLO_CONFIG_DIR": str(work / "yolo_config")}
    prefix = ["unshare", "-n"] if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"]).returncode == 0 else []
    proc = subprocess.run([*prefix, sys.executable, "-c", OFFLINE_GUARD, *det_args(work, "killed", "--fold", "0", "--resume"),
                           "--", str(killed.parent), str(work / "cache")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0 and "NETWORK_TRIED []" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]
    assert "coco8" not in proc.stdout + proc.stderr
    assert (killed / "done.json").is_file() and sorted(p.name for p in (killed / "oof").iterdir())


def test_a_failed_retrain_leaves_the_finished_detector_fold_as_it_was(work, det_run, monkeypatch):
    """The det stage trains into fold<k>.staging/ too: YOLO failing mid re-train keeps the old fold."""
    import src.engine.det as det

    fold = work / "runs" / "kept" / "fold0"
    shutil.copytree(det_run.fold, fold)
    before = {p.relative_to(fold): p.read_bytes() for p in sorted(fold.rglob("*")) if p.is_file()}

    def fail(cfg, data_yaml, staging, device):
        assert staging.path.name == "fold0.staging" and data_yaml.is_file()
        raise DataError("yolo failed")

    monkeypatch.setattr(det, "train_yolo", fail)
    with pytest.raises(DataError, match="yolo failed"):
        main(det_args(work, "kept", "--fold", "0"))
    assert {p.relative_to(fold): p.read_bytes() for p in sorted(fold.rglob("*")) if p.is_file()} == before

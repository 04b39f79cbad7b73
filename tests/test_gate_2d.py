"""The presence classifier on 2D images and its gate in the 2D ensemble: the cls stage on an nnU-Net-like
set whose labels are absent from some images (OOF (K,) per image, scored by AP), its reports and TTA OOF,
the gate step of index_map, the tuner searching it, the ensemble file that names it, and the submission
predicting it."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from src.cls_report import main as cls_report_main
from src.core.artifacts import load_prediction
from src.core.errors import DataError
from src.data.folds import make_folds
from src.data.formats.base import Sample
from src.data.formats.nnunet import FORMAT as NNUNET
from src.data.image_cache import ImageCache
from src.data.image_samples import ImageInput
from src.data.synthetic2d import generate_dataset
from src.engine.config import ClsConfig, Seg2DConfig
from src.engine.run import train
from src.ensembling.ensemble_file import AuxiliaryRun, EnsembleMember, load_ensemble, write_ensemble_file
from src.ensembling.params2d import ImageEnsembleParams
from src.ensembling.postprocess2d import index_map
from src.ensembling.search import SearchRules, coordinate_descent, quantise
from src.ensembling.search2d import ImageCase, ImageEvaluator, ImageSearchSpace
from src.ensembling.tune import TuneOptions, tune
from src.inference.fold_model import FoldModel
from src.inference.predict import PredictOptions, RunPredictor, predict_run
from src.inference.runs import TrainedRun
from src.metrics.presence import image_presence, presence_score, presence_table
from src.report import main as report_main
from src.submit import main as submit_main

QUIET = {"log": lambda line: None}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny nnU-Net 2D set (2 channels, 2 labels, each absent from some images), 2 folds; a segmenter
    `seg` and a classifier `cls` trained on both folds, and `cls_other` on other folds."""
    root = tmp_path_factory.mktemp("gate2d")
    data = root / "Dataset502_Gate"
    generate_dataset("nnunet", data, cases=12, test_cases=3, size=(32, 32))
    make_folds(data, n_folds=2, seed=0).to_csv(root / "folds.csv", index=False)
    make_folds(data, n_folds=2, seed=5).to_csv(root / "other.csv", index=False)
    common = dict(data_dir=str(data), cache_dir=str(root / "cache"), out=str(root / "runs"), img_size=24,
                  batch_size=4, epochs=2, workers=0, device="cpu", lr=3e-3)
    for fold in ("0", "1"):
        train(Seg2DConfig(**common, folds_csv=str(root / "folds.csv"), name="seg", fold=fold, arch="unet_tiny"))
        train(ClsConfig(**common, folds_csv=str(root / "folds.csv"), name="cls", fold=fold, arch="cls_tiny"))
        train(ClsConfig(**common, folds_csv=str(root / "other.csv"), name="cls_other", fold=fold, arch="cls_tiny"))
    return root


def test_the_classifier_saves_each_images_presence_scored_by_ap(work):
    cache = ImageCache(work / "cache")
    labels = cache.description.labels
    run = work / "runs" / "cls" / "fold0"
    record = json.loads((run / "config.json").read_text())
    probs, truth = [], []
    for key in record["val_case_days"]:
        oof = load_prediction(run / "oof" / f"{key}.npy", image=True)
        assert oof.dtype == np.float16 and oof.shape == (len(labels),)
        probs.append(oof.astype(np.float32))
        truth.append(image_presence(cache.load(key)[1], len(labels)))
    truth = np.stack(truth)
    assert truth.any(axis=0).all() and not truth.all(), "each label present in some images, absent from others"
    log = pd.read_csv(run / "log.csv")
    expected = presence_score(presence_table(np.stack(probs), truth, 0.5, labels, "images"))
    assert abs(log["val_score"].max() - expected) < 1e-9
    assert {f"val_ap_{name}" for name in labels} <= set(log)
    scores = pd.read_csv(run / "oof_scores.csv")
    assert sorted(scores["key"]) == sorted(record["val_case_days"]) and {"positives", "accuracy"} <= set(scores)
    weights = torch.load(run / "best.pt", weights_only=True)["model"]
    assert next(v for v in weights.values() if v.ndim == 4).shape[1] == 2  # the data's two channels


def test_image_presence_counts_every_label():
    mask = np.array([[0, 2], [2, 0]], dtype=np.uint8)
    assert image_presence(mask, 3).tolist() == [False, True, False]


def test_reports_name_the_datasets_labels(work, tmp_path, capsys):
    labels = list(ImageCache(work / "cache").description.labels)
    assert cls_report_main(["--run", str(work / "runs" / "cls"), "--out", str(tmp_path / "cls")]) == 0
    table = pd.read_csv(tmp_path / "cls" / "cls_report.csv")
    assert table["class"].tolist() == [*labels, "mean"] and (table["images"][:-1] == 12).all()
    assert (tmp_path / "cls" / "cls_pr_curve.png").stat().st_size > 0
    assert report_main(["--runs", str(work / "runs" / "cls"), "--out", str(tmp_path / "page")]) == 0
    page = (tmp_path / "page" / "index.html").read_text()
    assert "Presence precision-recall" in page and all(name in page for name in labels)


def test_a_tta_oof_of_the_classifier_is_per_image(work, tmp_path):
    out = predict_run(PredictOptions(run=work / "runs" / "cls", split="oof", tta=("hflip",), device="cpu",
                                     out=tmp_path / "pred"))
    manifest = json.loads((out / "predict.json").read_text())
    assert manifest["tta"] == ["hflip"] and len(manifest["case_days"]) == 12
    cache = ImageCache(work / "cache")
    fold = FoldModel.load(TrainedRun.load(work / "runs" / "cls").select(["0"], "oof")[0], torch.device("cpu"),
                          work / "cache")
    for key in fold.info.val_case_days:
        image, _ = cache.load(key)
        plain, mirrored = (fold.predict(ImageInput.of(key, pixels)) for pixels in (image, image[:, ::-1]))
        saved = load_prediction(out / f"{key}.npy", image=True)
        assert saved.shape == (2,) and np.allclose(saved, (plain + mirrored) / 2, atol=1e-3)


def test_the_gate_keeps_a_label_only_where_its_presence_reaches_the_threshold():
    probs = np.array([[[0.9, 0.2]], [[0.8, 0.7]]], dtype=np.float32)  # (K=2, 1, 2)
    params = ImageEnsembleParams({"a": (1, 1)}, (0.5, 0.5), gate_threshold=(0.6, 0.0))
    assert index_map({"a": probs}, params, presence=np.array([0.6, 0.0])).tolist() == [[1, 2]]
    # label 1 gated off: its pixel goes to label 2, the next candidate; label 2 has no gate
    assert index_map({"a": probs}, params, presence=np.array([0.59, 0.0])).tolist() == [[2, 2]]
    assert not params.replace_class("gate_threshold", 0, 0.0).gated
    with pytest.raises(ValueError, match="gate on a classifier's presence, and none was given"):
        index_map({"a": probs}, params)


def test_the_search_gates_off_false_positives_where_the_classifier_sees_nothing():
    square = np.zeros((8, 8), dtype=np.uint8)
    square[2:6, 2:6] = 1
    cases = [ImageCase(f"i{i}", f"i{i}", i % 2, 1, {"a": quantise(square[None] * np.float32(0.9))},
                       square * (i % 2 == 0), np.array([0.9 if i % 2 == 0 else 0.1], dtype=np.float32))
             for i in range(6)]  # every image predicts the square; only the even ones hold it
    start = ImageEnsembleParams.plain_mean(["a"], 1, 0.5)
    search = lambda gate: coordinate_descent(ImageEvaluator(cases, 1), ImageSearchSpace(("a",), 1, gate=gate),  # noqa: E731
                                             start=start, rules=SearchRules(1, 0.0, 0.0))
    without, found = search(False), search(True)
    assert without.result.score == pytest.approx(0.5) and not without.params.gated
    assert found.result.score == 1.0 and 0.1 < found.params.gate_threshold[0] <= 0.9


def test_the_tuner_searches_the_gate_and_scores_it_exactly(work, tmp_path):
    runs = work / "runs"
    plain = tune(TuneOptions(runs=(runs / "seg",), out=tmp_path / "plain.json", passes=1, holdout_folds=()), **QUIET)
    gated = tune(TuneOptions(runs=(runs / "seg",), gate=runs / "cls", out=tmp_path / "gated.json", passes=1,
                             min_gain=0.0, se_factor=0.0, holdout_folds=()), **QUIET)
    assert gated["oof"]["gate"] == str(runs / "cls") and plain["oof"]["gate"] is None
    per_pass = lambda r: r["search"]["evaluations"]  # noqa: E731
    assert per_pass(gated) > per_pass(plain)  # the gate's candidates were tried
    ensemble = load_ensemble(tmp_path / "gated.json")
    assert (ensemble.gate is not None) == ensemble.params.gated
    if ensemble.gate is not None:
        assert ensemble.gate.path == str(runs / "cls") and ensemble.gate.folds == ("0", "1")
    # no held-out folds, so what the search found is written; its score is exact: every OOF image through
    # index_map with its presence
    cache = ImageCache(work / "cache")
    seg, cls = TrainedRun.load(runs / "seg"), TrainedRun.load(runs / "cls")
    found = ImageEnsembleParams.from_dict(gated["params"])
    dice = []
    for key, path in seg.prediction_files("oof").items():
        probs = load_prediction(path, image=True)
        pred = index_map({"seg": probs}, found, presence=load_prediction(cls.prediction_files("oof")[key], image=True))
        truth = cache.load(key)[1]
        per_class = [2 * ((pred == k) & (truth == k)).sum() / ((pred == k).sum() + (truth == k).sum())
                     if ((pred == k).sum() + (truth == k).sum()) else 1.0 for k in (1, 2)]
        dice.append(np.mean(per_class))
    assert abs(np.mean(dice) - gated["scores"]["tuned_in_sample"]["score"]) < 1e-6


def test_the_gate_must_classify_the_same_images_on_the_same_folds(work, tmp_path):
    runs = work / "runs"
    with pytest.raises(DataError, match="^--gate .*seg: a seg2d run predicts probabilities, --gate needs presence$"):
        tune(TuneOptions(runs=(runs / "seg",), gate=runs / "seg", out=tmp_path / "e.json"), **QUIET)
    with pytest.raises(DataError, match="cls_other: .* is in fold . but in fold ."):
        tune(TuneOptions(runs=(runs / "seg",), gate=runs / "cls_other", out=tmp_path / "e.json"), **QUIET)
    with pytest.raises(DataError, match="^--runs .*cls: a cls run predicts presence"):
        tune(TuneOptions(runs=(runs / "cls",), out=tmp_path / "e.json"), **QUIET)


def _gated_file(work: Path, path: Path, gate_threshold: tuple[float, float]) -> Path:
    params = ImageEnsembleParams({"seg": (1.0, 1.0)}, (0.5, 0.5), gate_threshold=gate_threshold)
    gate = AuxiliaryRun.of(TrainedRun.load(work / "runs" / "cls"))
    write_ensemble_file(path, [EnsembleMember.of(TrainedRun.load(work / "runs" / "seg"))], [gate], gate, None,
                        params, dims="2d")
    return path


def test_the_submission_predicts_the_gate_as_the_tuner_applied_it(work, tmp_path):
    data = work / "Dataset502_Gate"
    ensemble = _gated_file(work, tmp_path / "e.json", (0.5, 1.0))  # label 2 never reaches 1.0: always gated off
    assert submit_main(["--ensemble", str(ensemble), "--data-dir", str(data), "--out", str(tmp_path / "sub"),
                        "--device", "cpu"]) == 0
    description = ImageCache(work / "cache").description
    seg = RunPredictor(TrainedRun.load(work / "runs" / "seg"), split="test", cache_dir=work / "cache")
    cls = RunPredictor(TrainedRun.load(work / "runs" / "cls"), split="test", cache_dir=work / "cache")
    params = load_ensemble(ensemble).params
    samples = NNUNET.samples(data, "test").samples
    assert len(samples) == 3
    for sample in samples:
        image = ImageInput.of(sample.id, NNUNET.read_image(sample, description))
        expected = index_map({"seg": seg.predict(image)}, params, presence=cls.predict(image))
        written = NNUNET.read_label(Sample(sample.id, sample.images, label=tmp_path / "sub" / f"{sample.id}.png"),
                                    description)
        assert np.array_equal(written, expected) and not (written == 2).any()
    record = json.loads((tmp_path / "sub" / "submission.json").read_text())
    assert record["gate"] == str(work / "runs" / "cls")


@pytest.mark.parametrize("change,message", [
    (lambda r: r.update(gate=None, auxiliary=[]), "gates on a classifier but 'gate' names no run"),
    (lambda r: r["params"].update(gate_threshold=[0.0, 0.0]), "is off but 'gate' names a run"),
    (lambda r: r.update(gate=None), "'auxiliary' describes a run that 'gate' does not name"),
    (lambda r: r.update(crop="runs/det"), "a 2D ensemble has no crop run"),
    (lambda r: r["params"].update(gate_threshold=[0.5, 1.5]), r"bad ensemble parameters \(gate_threshold"),
])
def test_a_bad_gated_file_is_a_one_line_error_naming_it(work, tmp_path, change, message):
    path = _gated_file(work, tmp_path / "e.json", (0.5, 0.0))
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    with pytest.raises(DataError, match=message) as err:
        load_ensemble(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)

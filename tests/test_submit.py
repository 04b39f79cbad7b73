"""Submission: every row of the test layout in order, RLE round trip, validation, scoring against the
synthetic test truth, empty test/ with and without the train fallback."""
import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_predict import build_trained_runs, gated_plain_mean, one_thread  # noqa: F401  (runs built once per session)

from src.bench.submit import generated_split
from src.core.errors import DataError
from src.data import rle
from src.data.layout import CLASSES, scan_split
from src.ensembling.ensemble_file import load_ensemble
from src.ensembling.submission import (
    EnsemblePredictor,
    SubmitOptions,
    order_rows,
    read_volume,
    submit,
    validate_submission,
)
from src.inference.predict import PredictOptions, predict_run
from src.metrics.scoring import score_submission
from src.submit import main


@pytest.fixture(scope="module")
def work(tmp_path_factory, one_thread) -> tuple[Path, Path]:
    """(trained runs root, ensemble.json of the plain mean of the two segmenters gated by the classifier,
    with class 0 ungated at threshold 0.05 so that the submission has masks whatever one epoch learnt)."""
    root = build_trained_runs(tmp_path_factory.getbasetemp() / "trained_runs")
    out = tmp_path_factory.mktemp("submit") / "ensemble.json"
    record = gated_plain_mean(root, out, [root / "runs" / "unet", root / "runs" / "fpn"], root / "runs" / "cls")
    params = record["params"]
    params["thresholds"][0], params["gate_threshold"][0], params["gate_threshold"][2] = 0.05, 0.0, 0.5
    params["min_size"][0] = params["z_min_run"][0] = 0
    out.write_text(json.dumps(record))
    return root, out


def test_submission_covers_the_sample_in_order_and_round_trips(work, tmp_path):
    root, ensemble = work
    out = submit(SubmitOptions(ensemble=ensemble, data_dir=root / "data", out=tmp_path / "sub.csv", device="cpu"))
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    sample = pd.read_csv(root / "data" / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["id", "class", "predicted"]
    assert sub[["id", "class"]].equals(sample[["id", "class"]]) and len(sub) > 0
    assert (sub["predicted"] != "").any()
    index = scan_split(root / "data", "test")
    predictor = EnsemblePredictor(load_ensemble(ensemble), device=torch.device("cpu"))
    rows = sub.set_index(["id", "class"])["predicted"]
    for _, group in index.groupby("case_day", sort=False):
        vol = read_volume(group)
        masks = predictor.masks(vol)
        h, w = vol.shape[1:]
        decoded = np.stack([[rle.decode(rows[(sid, cls)], (h, w)) for cls in CLASSES] for sid in vol.ids])
        assert np.array_equal(decoded > 0, masks)
    result = score_submission(root / "data", root / "data_test_truth.csv", out)
    assert 0.0 <= result.score <= 1.0 and len(result.per_case_day) == index["case_day"].nunique()


def test_validation_catches_broken_submissions(work, tmp_path):
    root, ensemble = work
    sub = pd.read_csv(submit(SubmitOptions(ensemble=ensemble, data_dir=root / "data", out=tmp_path / "sub.csv",
                                           device="cpu")), dtype=str, keep_default_na=False)
    index = scan_split(root / "data", "test")
    shapes = {sid: (int(h), int(w)) for sid, h, w in zip(index["id"], index["height"], index["width"])}
    validate_submission(sub, shapes)
    h, w = next(iter(shapes.values()))
    at_row_4 = lambda text: [text if i == 4 else p for i, p in enumerate(sub["predicted"])]  # noqa: E731
    broken = {
        "duplicate row": pd.concat([sub, sub.iloc[[5]]], ignore_index=True),
        "missing row": sub.drop(index=7).reset_index(drop=True),
        "not increasing": sub.assign(predicted=at_row_4("10 5 3 2")),
        "runs past the image": sub.assign(predicted=at_row_4(f"{h * w - 1} 5")),
        "odd number": sub.assign(predicted=at_row_4("1 2 3")),
        "unexpected id": sub.assign(id=["case999_day0_slice_0001" if i == 2 else s for i, s in enumerate(sub["id"])]),
    }
    for what, frame in broken.items():
        with pytest.raises(DataError, match=r"row|missing"):
            validate_submission(frame, shapes)
            pytest.fail(f"not caught: {what}")
    shuffled = sub[["id", "class"]].sample(frac=1.0, random_state=0).reset_index(drop=True)
    ordered = order_rows(sub, shuffled)
    assert ordered[["id", "class"]].equals(shuffled)
    assert ordered.set_index(["id", "class"])["predicted"].equals(sub.set_index(["id", "class"]).loc[
        pd.MultiIndex.from_frame(shuffled), "predicted"])
    with pytest.raises(DataError, match="no prediction for id"):
        order_rows(sub.iloc[3:], shuffled)


def _without_test(root: Path, dest: Path, sample: bool) -> Path:
    """A copy of the dataset whose test/ is empty (Kaggle's development phase)."""
    dest.mkdir()
    (dest / "train").symlink_to(root / "data" / "train", target_is_directory=True)
    shutil.copy(root / "data" / "train.csv", dest / "train.csv")
    (dest / "test").mkdir()
    if sample:
        shutil.copy(root / "data" / "sample_submission.csv", dest / "sample_submission.csv")
    return dest


def test_empty_test_split(work, tmp_path, capsys):
    root, ensemble = work
    with_sample = _without_test(root, tmp_path / "dev", sample=True)
    assert main(["--ensemble", str(ensemble), "--data-dir", str(with_sample), "--out", str(tmp_path / "a.csv")]) == 0
    assert "is empty" in capsys.readouterr().out
    empty = pd.read_csv(tmp_path / "a.csv", dtype=str, keep_default_na=False)
    sample = pd.read_csv(with_sample / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert empty[["id", "class"]].equals(sample[["id", "class"]]) and (empty["predicted"] == "").all()
    bare = _without_test(root, tmp_path / "bare", sample=False)
    with pytest.raises(DataError, match="no test images and no sample_submission.csv"):
        submit(SubmitOptions(ensemble=ensemble, data_dir=bare, out=tmp_path / "b.csv", device="cpu"))
    assert not (tmp_path / "b.csv").exists()


def test_train_fallback_predicts_train_case_days_from_moved_runs(work, tmp_path):
    root, ensemble = work
    bare = _without_test(root, tmp_path / "bare", sample=True)
    moved = tmp_path / "kernel_runs"
    shutil.copytree(root / "runs", moved)
    out = submit(SubmitOptions(ensemble=ensemble, data_dir=bare, out=tmp_path / "fallback.csv", allow_train_fallback=2,
                               device="cpu", runs_root=moved))
    sub = pd.read_csv(out, dtype=str, keep_default_na=False)
    index = scan_split(bare, "train")
    first = index[index["case_day"].isin(list(dict.fromkeys(index["case_day"]))[:2])]
    assert list(sub["id"]) == [sid for sid in first["id"] for _ in CLASSES]
    assert list(sub["class"]) == list(CLASSES) * len(first)
    truth = pd.read_csv(bare / "train.csv")
    truth[truth["id"].isin(set(first["id"]))].to_csv(tmp_path / "truth.csv", index=False)
    result = score_submission(bare, tmp_path / "truth.csv", out, split="train")
    assert 0.0 <= result.score <= 1.0 and len(result.per_case_day) == 2


def test_bad_ensemble_file_is_a_one_line_error(work, tmp_path):
    root, _ = work
    with pytest.raises(DataError, match="ensemble file not found"):
        main(["--ensemble", str(tmp_path / "nope.json"), "--data-dir", str(root / "data")])
    (tmp_path / "bad.json").write_text(json.dumps({"version": 2, "runs": [], "params": {"weights": {}}}))
    with pytest.raises(DataError, match="bad.json"):
        main(["--ensemble", str(tmp_path / "bad.json"), "--data-dir", str(root / "data")])


def _traced_peak(fn) -> int:
    """Peak bytes of numpy's (traced) allocations while fn runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _peaks(root: Path, test_cases: int) -> tuple[int, int, int]:
    """(test case-days, peak bytes of src.submit, of src.predict --split test) on a generated split
    of 128 x 128 x 24 scans with two untrained members and hflip TTA."""
    summary, ensemble = generated_split(root, test_cases, models=2, train_cases=1, arch="unet_tiny", img_size=32,
                                        seed=0, sizes=[(128, 128)], slices=[24])
    data = root / "data"
    submit_peak = _traced_peak(lambda: submit(SubmitOptions(ensemble=ensemble, data_dir=data, out=root / "sub.csv",
                                                            device="cpu")))
    predict_peak = _traced_peak(lambda: predict_run(PredictOptions(run=root / "runs" / "m0", split="test",
                                                                   tta=("hflip",), data_dir=data, out=root / "pred",
                                                                   device="cpu")))
    return summary.test_case_days, submit_peak, predict_peak


def test_submit_and_predict_memory_does_not_grow_with_the_test_split(tmp_path):
    """Both stream the split one case-day at a time: a split several times larger peaks at about
    the same traced bytes (every member's probabilities, TTA, masks), within one case-day of one
    member's float32 probabilities."""
    small_days, *small = _peaks(tmp_path / "small", 1)
    large_days, *large = _peaks(tmp_path / "large", 4)
    one_case_day = 24 * 3 * 128 * 128 * 4
    assert large_days >= small_days + 4
    for stage, before, after in zip(("submit", "predict"), small, large):
        assert after - before < one_case_day, (stage, before, after)

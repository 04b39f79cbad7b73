"""Ensemble post-processing on hand-made arrays, exact region-of-interest scoring, and tuning on fake runs
(OOF files written directly, truth in a real cache) with the real metric."""
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from src.core.errors import DataError
from src.data.volumes import write_case_day
from src.ensemble import main
from src.ensembling.ensemble_file import AuxiliaryRun, load_ensemble
from src.ensembling.params import EnsembleParams
from src.ensembling.postprocess import (
    apply_ensemble,
    blend,
    clean_z_runs,
    remove_small_components,
)
from src.ensembling.search import Evaluator, SearchSpace, make_case, region_of_interest
from src.ensembling.tune import TuneOptions, tune
from src.inference.settings import PredictSettings
from src.metrics.competition import score_volumes

SHAPE = (8, 3, 32, 40)  # Z, classes, H, W (W != H)
GROUPS2 = {"a": "2d", "b": "2d"}


# ---- hand-made arrays --------------------------------------------------------------------------
def test_thresholds_are_per_class_and_strict():
    probs = np.full(SHAPE, 0.5, dtype=np.float16)
    params = EnsembleParams(weights={"a": (1, 1, 1)}, groups={"a": "2d"}, thresholds=(0.4, 0.5, 0.6))
    masks = apply_ensemble({"a": probs}, None, params)
    assert masks.dtype == bool and masks.shape == SHAPE
    assert masks[:, 0].all() and not masks[:, 1:].any()


def test_blend_weights_groups_and_fusion():
    a, b, c = (np.full(SHAPE, v, dtype=np.float16) for v in (0.2, 0.6, 0.8))
    groups = {"a": "2d", "b": "2d", "c": "3d"}
    params = EnsembleParams(weights={"a": (1, 0, 1), "b": (1, 1, 0), "c": (1, 1, 1)}, groups=groups,
                            fusion=(0.25, 0.5, 0.0))
    out = blend({"a": a, "b": b, "c": c}, params).astype(np.float32)
    expected = (0.75 * (0.2 + 0.6) / 2 + 0.25 * 0.8, 0.5 * 0.6 + 0.5 * 0.8, 0.2)
    np.testing.assert_allclose(out[0, :, 0, 0], expected, atol=1e-3)
    only_3d = EnsembleParams(weights={"a": (0, 0, 0), "b": (0, 0, 0), "c": (1, 1, 1)}, groups=groups)
    np.testing.assert_allclose(blend({"a": a, "b": b, "c": c}, only_3d).astype(np.float32), 0.8, atol=1e-3)
    with pytest.raises(ValueError, match="no model has weight"):
        blend({"a": a}, EnsembleParams(weights={"a": (1, 0, 1)}, groups={"a": "2d"}))


def test_component_size_filter_removes_small_blobs_only():
    mask = np.zeros((6, 20, 20), dtype=bool)
    mask[1:4, 2:5, 2:5] = True  # 27 voxels
    mask[4, 5, 5] = True  # touches the cube diagonally: same 26-connected component
    mask[0, 15, 15] = mask[0, 15, 16] = True  # a 2-voxel blob
    out = remove_small_components(mask, 3)
    assert out.sum() == 28 and not out[0, 15].any()
    assert remove_small_components(mask, 0).sum() == mask.sum()


def test_z_cleanup_removes_short_runs_or_keeps_the_largest():
    mask = np.zeros((10, 6, 6), dtype=bool)
    mask[0, 0, 0] = True  # isolated slice
    mask[3:6, :2, :2] = True  # 3 slices, 12 voxels
    mask[8:10, :, :] = True  # 2 slices, 72 voxels
    present = lambda m: np.flatnonzero(m.any(axis=(1, 2))).tolist()  # noqa: E731
    assert present(clean_z_runs(mask.copy(), min_run=2)) == [3, 4, 5, 8, 9]
    assert present(clean_z_runs(mask.copy(), min_run=3)) == [3, 4, 5]
    assert present(clean_z_runs(mask.copy(), keep_largest=True)) == [8, 9]
    assert present(clean_z_runs(mask.copy())) == [0, 3, 4, 5, 8, 9]


def test_gates_and_crop():
    probs = np.zeros(SHAPE, dtype=np.float16)
    probs[2, 0, :2, :2] = 0.9  # 4 pixels above 0.6 in slice 2
    probs[5, 0, :1, :3] = 0.9  # 3 pixels in slice 5
    probs[:, 1, 10:20, 10:20] = 0.9
    base = EnsembleParams(weights={"a": (1, 1, 1)}, groups={"a": "2d"})
    rule = base.replace_class("gate_pixels", 0, 3).replace_class("gate_prob", 0, 0.6)
    ruled = apply_ensemble({"a": probs}, None, rule)
    assert ruled[2, 0].sum() == 4 and not ruled[5, 0].any()  # more than 3 pixels needed
    assert ruled[:, 1].sum() == probs.shape[0] * 100  # other classes untouched
    presence = np.ones(SHAPE[:2])
    presence[3, 1] = 0.1
    gated = apply_ensemble({"a": probs}, presence, base.replace_class("gate_threshold", 1, 0.5))
    assert not gated[3, 1].any() and gated[4, 1].sum() == 100
    with pytest.raises(DataError, match="no classifier probabilities"):
        apply_ensemble({"a": probs}, None, base.replace_class("gate_threshold", 1, 0.5))
    cropped = apply_ensemble({"a": probs}, None, dataclasses.replace(base, crop=True), box=(0, 15, 0, 12))
    assert cropped[:, 1].sum() == probs.shape[0] * 5 * 2 and cropped[2, 0].sum() == 4


def test_params_round_trip_through_json():
    params = EnsembleParams(weights={"a": (1, 0.5, 2), "b": (0, 1, 1)}, groups={"a": "2d", "b": "3d"},
                            fusion=(0.2, 0.5, 0.8), thresholds=(0.3, 0.45, 0.6), gate_pixels=(0, 12, 5),
                            gate_prob=(0.5, 0.6, 0.7), min_size=(0, 50, 100), z_min_run=(2, 0, 0),
                            z_largest=(False, True, False), crop=True)
    assert EnsembleParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    with pytest.raises(DataError, match="unknown ensemble parameter"):
        EnsembleParams.from_dict({**params.to_dict(), "dilate": 1})


# ---- scoring -----------------------------------------------------------------------------------
def _blobs(rng: np.random.Generator, shape=SHAPE) -> np.ndarray:
    """Truth-like masks: one ellipsoid per class over a range of slices."""
    z, _, h, w = shape
    zz, yy, xx = np.mgrid[:z, :h, :w]
    out = np.zeros(shape, dtype=bool)
    for c in range(3):
        cz, cy, cx = rng.uniform(2, z - 2), rng.uniform(6, h - 6), rng.uniform(6, w - 6)
        rz, ry, rx = rng.uniform(1.5, 3), rng.uniform(3, 7), rng.uniform(3, 7)
        out[:, c] = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return out


def _model_probs(truth: np.ndarray, rng: np.random.Generator, blur: float, spurious: int,
                 noise: float = 0.12) -> np.ndarray:
    """A noisy, blurred prediction of `truth` with a few spurious small blobs."""
    probs = ndimage.gaussian_filter(truth.astype(np.float32), (0.5, 0, blur, blur)) * rng.uniform(0.6, 1.0)
    probs += rng.normal(0, noise, truth.shape).astype(np.float32)
    for _ in range(spurious):
        z, c, y, x = (int(rng.integers(0, n - 2)) for n in truth.shape)
        probs[z, c, y:y + 2, x:x + 2] += 0.7
    return np.clip(probs, 0, 1).astype(np.float16)


def test_region_of_interest_scoring_equals_full_volumes():
    rng = np.random.default_rng(2)
    full, cases = [], []
    for i in range(3):
        truth = _blobs(rng)
        probs = {"a": _model_probs(truth, rng, 1.0, 1, noise=0.03), "b": _model_probs(truth, rng, 2.0, 1, noise=0.03)}
        for p in probs.values():
            p[0, 0, :3, :3] = 0.45  # faint: positive only at thresholds below 0.45
        presence = rng.random(SHAPE[:2])
        box = (2, 28, 3, 35)
        full.append((f"case{i}_day0", probs, truth, presence, box))
        cases.append(make_case(f"case{i}_day0", i % 2, probs, truth, presence, box))
    assert any(c.truth.size < np.prod(SHAPE) for c in cases)  # the regions really cut something ...
    assert all(region_of_interest(p.values(), t, 0.5) != region_of_interest(p.values(), t) for _, p, t, _, _ in full)
    evaluator = Evaluator(cases)  # ... but never what a low threshold marks
    for params in (EnsembleParams.plain_mean(GROUPS2), dataclasses.replace(EnsembleParams.plain_mean(GROUPS2),
                                                                           thresholds=(0.3, 0.3, 0.3)),
                   EnsembleParams(weights={"a": (1, 0, 2), "b": (1, 1, 0.5)}, groups=GROUPS2,
                                  thresholds=(0.3, 0.4, 0.6),
                                  gate_threshold=(0.3, 0, 0), gate_pixels=(0, 3, 0), gate_prob=(0.5, 0.6, 0.5),
                                  min_size=(5, 0, 10), z_min_run=(0, 2, 0), z_largest=(True, False, False), crop=True)):
        expected = score_volumes((cd, apply_ensemble(p, g, params, b), t) for cd, p, t, g, b in full)
        for case, (_, p, _, g, b) in zip(cases, full):
            assert np.array_equal(_full_masks(evaluator, case, params), apply_ensemble(p, g, params, b))
        for _ in range(2):  # again, from the caches
            got = evaluator.score(params)
            assert (got.score, got.dice, got.hausdorff) == (expected.score, expected.dice, expected.hausdorff)
            assert got.per_case_day.equals(expected.per_case_day)


def test_evaluator_class_caches_follow_a_search_exactly():
    """Candidates of every coordinate, one class changed at a time, scored through the per-class
    caches (small, so entries are evicted and rebuilt), equal scoring the full volumes afresh."""
    rng = np.random.default_rng(3)
    full, cases = [], []
    for i in range(3):
        truth = _blobs(rng)
        probs = {"a": _model_probs(truth, rng, 1.0, 1, noise=0.05), "b": _model_probs(truth, rng, 2.0, 2, noise=0.05)}
        full.append((f"case{i}_day0", probs, truth, rng.random(SHAPE[:2]), (2, 28, 3, 35)))
        cases.append(make_case(*full[-1][:1], i % 2, *full[-1][1:]))
    evaluator = Evaluator(cases)
    evaluator.KEEP = 2
    space = SearchSpace.for_cases(cases, GROUPS2)
    params, checked = EnsembleParams.plain_mean(GROUPS2), 0
    for label, candidates in space.coordinates():
        for candidate in candidates(params)[::2]:
            expected = score_volumes((cd, apply_ensemble(p, g, candidate, b), t) for cd, p, t, g, b in full)
            assert evaluator.score(candidate).score == expected.score
            checked += 1
        if not label.startswith("model "):  # member selection: keep both models, so every weight is searched
            params = candidates(params)[-1]  # move on, as an accepted change would
    assert checked > 20


# ---- tuning on fake runs -----------------------------------------------------------------------
def _fake_run(root: Path, name: str, stage: str, folds: dict[str, int], preds: dict[str, np.ndarray]) -> Path:
    """A run folder as the trainer leaves it: fold*/config.json, best.pt, oof/<case_day>.npy, done.json."""
    for fold in sorted(set(folds.values())):
        val = [cd for cd, f in folds.items() if f == fold]
        folder = root / name / f"fold{fold}"
        (folder / "oof").mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"config": {"stage": stage, "fold": str(fold)},
                                                        "val_case_days": val}))
        (folder / "best.pt").write_bytes(b"")
        (folder / "done.json").write_text(json.dumps({"best_score": 0.5}))
        for cd in val:
            if isinstance(preds[cd], dict):  # a detector's box
                (folder / "oof" / f"{cd}.json").write_text(json.dumps(preds[cd]))
            else:
                np.save(folder / "oof" / f"{cd}.npy", preds[cd])
    return root / name


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """6 case-days of 3 cases in 3 folds; a 2.5D model, a blurrier one, a 3D one; a perfect classifier
    and a detector whose boxes hold the organs."""
    root = tmp_path_factory.mktemp("ensemble")
    rng = np.random.default_rng(0)
    folds, truths = {}, {}
    for case in range(3):
        for day in (1, 2):
            cd = f"case{case + 1}_day{day}"
            folds[cd], truths[cd] = case, _blobs(rng)
            ids = [f"{cd}_slice_{z + 1:04d}" for z in range(SHAPE[0])]
            write_case_day(root / "cache", "train", cd, np.zeros((SHAPE[0], *SHAPE[2:]), np.uint16),
                           truths[cd].astype(np.uint8), {"ids": ids, "sx": 1.5, "sy": 1.5})
    runs = {name: _fake_run(root / "runs", name, stage, folds,
                            {cd: _model_probs(t, rng, blur, spurious) for cd, t in truths.items()})
            for name, stage, blur, spurious in (("sharp", "seg2d", 0.7, 4), ("soft", "seg2d", 2.0, 2),
                                                ("vol", "seg3d", 1.2, 6))}
    presence = {cd: t.any(axis=(2, 3)).astype(np.float16) for cd, t in truths.items()}
    runs["cls"] = _fake_run(root / "runs", "cls", "cls", folds, presence)
    boxes = {}
    for cd, t in truths.items():
        ys, xs = np.nonzero(t.any(axis=(0, 1)))
        boxes[cd] = {"box": [int(ys.min()) - 1, int(ys.max()) + 2, int(xs.min()) - 1, int(xs.max()) + 2]}
    runs["det"] = _fake_run(root / "runs", "det", "det", folds, boxes)
    return root, runs, folds


def test_tune_beats_the_plain_mean_and_reports_held_out(fake, capsys):
    root, runs, _ = fake
    out = root / "ensemble.json"
    record = tune(TuneOptions(runs=[runs["sharp"], runs["soft"], runs["vol"]], out=out, cache_dir=root / "cache",
                              passes=1))
    scores = record["scores"]
    assert scores["tuned_in_sample"]["score"] >= scores["plain_mean"]["score"]
    assert scores["tuned_in_sample"]["score"] > max(s["score"] for s in scores["models"].values())
    assert set(scores["held_out_by_fold"]) == {"0", "1", "2"}
    gap = scores["tuned_in_sample"]["score"] - scores["tuned_held_out"]["score"]
    assert scores["gap"] == pytest.approx(gap, abs=1e-5)
    table = capsys.readouterr().out
    for label in ("sharp (seg2d) @0.5", "vol (seg3d) @0.5", "plain mean @0.5", "in-sample", "held-out (3 folds)"):
        assert label in table
    ensemble = load_ensemble(out)
    assert record["oof"]["stages"] == {"sharp": "seg2d", "soft": "seg2d", "vol": "seg3d"}
    # the file holds the models the written parameters weigh, and no other
    written = [m.name for m in ensemble.members]
    assert written == ensemble.params.used_models() and set(written) <= {"sharp", "soft", "vol"}
    assert all(m.folds == ("0", "1", "2") and m.predict == PredictSettings() for m in ensemble.members)
    assert all(m.group == ("3d" if m.name == "vol" else "2d") for m in ensemble.members)
    # the written candidate is the best held out, and its saved parameters give its reported score
    choice = scores["choice"]
    assert scores["written"]["name"] == choice["written"]
    assert choice["candidates"][choice["written"]]["score"] == max(c["score"] for c in choice["candidates"].values())
    pairs = []
    for cd in sorted({p.stem for p in runs["sharp"].glob("fold*/oof/*.npy")}):
        probs = {n: np.load(next(runs[n].glob(f"fold*/oof/{cd}.npy"))) for n in written}
        truth = np.load(root / "cache" / "train" / cd / "mask.npy") > 0
        pairs.append((cd, apply_ensemble(probs, None, ensemble.params), truth))
    assert score_volumes(pairs).score == pytest.approx(scores["written"]["in_sample"]["score"], abs=1e-6)


def test_classifier_gate_is_tuned_when_given(fake, tmp_path):
    root, runs, _ = fake
    record = tune(TuneOptions(runs=[runs["sharp"]], gate=runs["cls"], out=tmp_path / "e.json", cache_dir=root / "cache",
                  holdout_folds=[], passes=1), log=lambda line: None)
    assert record["gate"] == str(runs["cls"]) and "tuned_held_out" not in record["scores"]
    assert load_ensemble(tmp_path / "e.json").gate == AuxiliaryRun(str(runs["cls"]), "cls", ("0", "1", "2"), ())
    assert any(t > 0 for t in record["params"]["gate_threshold"])  # a perfect classifier removes spurious blobs
    assert record["scores"]["tuned_in_sample"]["score"] > record["scores"]["plain_mean"]["score"]


def test_detector_crop_is_tried(fake, tmp_path):
    root, runs, _ = fake
    record = tune(TuneOptions(runs=[runs["vol"]], crop=runs["det"], out=tmp_path / "e.json", cache_dir=root / "cache",
                  holdout_folds=[], passes=1), log=lambda line: None)
    assert record["crop"] == str(runs["det"]) and record["params"]["crop"] is True  # boxes drop spurious blobs
    assert load_ensemble(tmp_path / "e.json").crop.stage == "det"


def test_cli_and_bad_runs(fake, tmp_path, capsys):
    root, runs, folds = fake
    args = ["tune", "--cache-dir", str(root / "cache"), "--holdout-folds", "none", "--passes", "1", "--workers", "1"]
    assert main([*args, "--runs", str(runs["sharp"]), str(runs["soft"]), "--out", str(tmp_path / "cli.json")]) == 0
    assert "plain mean @0.5" in capsys.readouterr().out and (tmp_path / "cli.json").exists()
    with pytest.raises(DataError, match="pass a classifier with --gate"):
        main([*args, "--runs", str(runs["cls"]), "--out", str(tmp_path / "x.json")])
    moved = {cd: (f + 1) % 3 for cd, f in folds.items()}
    other = _fake_run(tmp_path / "runs", "other", "seg2d", moved, {cd: np.zeros(SHAPE, np.float16) for cd in folds})
    with pytest.raises(DataError, match="same folds file"):
        main([*args, "--runs", str(runs["sharp"]), str(other), "--out", str(tmp_path / "y.json")])
    with pytest.raises(DataError, match="run folder not found"):
        main([*args, "--runs", str(tmp_path / "missing")])
    held = [a for a in args if a not in ("--holdout-folds", "none")]
    with pytest.raises(DataError, match=r"--holdout-folds 99: no OOF case-day is in that fold \(folds: 0, 1, 2\)"):
        main([*held, "--holdout-folds", "99", "--runs", str(runs["sharp"]), "--out", str(tmp_path / "z.json")])
    assert not (tmp_path / "z.json").exists()
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()


def _full_masks(evaluator, case, params):
    """The evaluator's region masks of a case pasted into an empty full-size volume."""
    out = np.zeros(case.shape, dtype=bool)
    z, y, x = case.roi
    out[z, :, y, x] = np.stack([evaluator._class(case, params, c)[0] for c in range(3)], axis=1)
    return out


def test_a_half_trained_member_is_refused_unless_allowed(fake, tmp_path, capsys):
    root, runs, _ = fake
    half = tmp_path / "half"
    shutil.copytree(runs["sharp"], half)
    (half / "fold1" / "done.json").unlink()
    with pytest.raises(DataError, match="half/fold1: incomplete fold"):
        tune(TuneOptions(runs=[half], out=tmp_path / "e.json", cache_dir=root / "cache", holdout_folds=(), passes=0),
             log=lambda line: None)
    record = tune(TuneOptions(runs=[half], out=tmp_path / "e.json", cache_dir=root / "cache", holdout_folds=(),
                              passes=0, allow_incomplete=True), log=lambda line: None)
    assert record["runs"][0]["name"] == "half" and "incomplete fold used" in capsys.readouterr().err

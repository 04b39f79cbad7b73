"""The 2D ensemble: index_map on hand-made arrays (the neutral parameters are label_map, component sizes
and hole filling), the tuner on fabricated OOF runs (src.bench.ensemble2d: the file, the search's floor,
proxies against exact scores, GI options and mismatched runs refused, bad files), and `src.submit
--ensemble` on a tiny Carvana set with a run trained one epoch (the neutral file is `--runs`'s plain mean)."""
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from src.bench.ensemble2d import fabricate
from src.core.errors import DataError
from src.data.folds import make_folds
from src.data.formats.base import Sample
from src.data.formats.carvana import FORMAT as CARVANA
from src.data.image_cache import ImageCache
from src.data.image_samples import ImageInput, label_map
from src.data.synthetic2d import generate_dataset
from src.engine.config import Seg2DConfig
from src.engine.run import train
from src.ensembling import contributions, oof2d
from src.ensembling.ensemble_file import EnsembleMember, load_ensemble, write_ensemble_file
from src.ensembling.oof2d import image_sources, read_proxies, stream
from src.ensembling.params import EnsembleParams
from src.ensembling.params2d import ImageEnsembleParams
from src.ensembling.postprocess2d import fill_holes, index_map, index_maps
from src.ensembling.search import SearchRules, coordinate_descent
from src.ensembling.search2d import ImageEvaluator, ImageSearchSpace
from src.ensembling.tune import TuneOptions, tune
from src.inference.predict import RunPredictor
from src.inference.runs import TrainedRun
from src.inference.tta import merge
from src.submit import main as submit_main


# ---- index_map on hand-made arrays -------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_neutral_params_are_label_map_of_the_mean(dtype):
    rng = np.random.default_rng(0)
    for k in (1, 3):
        for m in (1, 2, 3):
            probs = [rng.random((k, 20, 30)).astype(dtype) for _ in range(m)]
            names = ["a", "b", "c"][:m]
            for threshold in (0.5, 0.45, 0.37):
                neutral = ImageEnsembleParams.plain_mean(names, k, threshold)
                assert np.array_equal(index_map(dict(zip(names, probs)), neutral), label_map(merge(probs), threshold))


def test_per_class_thresholds_weights_and_the_most_probable_class():
    a = np.array([[[0.6, 0.3]], [[0.7, 0.45]]], dtype=np.float32)  # (K=2, 1, 2)
    b = np.array([[[0.2, 0.3]], [[0.1, 0.45]]], dtype=np.float32)
    params = ImageEnsembleParams({"a": (1, 1), "b": (0, 1)}, (0.5, 0.4))
    # class 1 alone: 0.6, 0.3; class 2 the mean: 0.4, 0.45 -> pixel 0: only class 1 above; pixel 1: class 2
    assert index_map({"a": a, "b": b}, params).tolist() == [[1, 2]]
    assert index_map({"a": a, "b": b}, ImageEnsembleParams({"a": (1, 1), "b": (0, 1)}, (0.7, 0.3))).tolist() == [[2, 2]]
    with pytest.raises(ValueError, match="no model has weight for class 0"):
        index_map({"a": a, "b": b}, ImageEnsembleParams({"a": (0, 1), "b": (0, 1)}, (0.5, 0.5)))


def test_index_maps_share_blends_and_equal_index_map_of_each_set():
    rng = np.random.default_rng(1)
    probs = {n: rng.random((2, 30, 40)).astype(np.float16) for n in ("a", "b")}
    base = ImageEnsembleParams({"a": (1.0, 1.0), "b": (0.5, 1.0)}, (0.5, 0.5))
    sets = [base, dataclasses.replace(base, thresholds=(0.3, 0.6)), base.replace_weight("b", 0, 0.0),
            dataclasses.replace(base, min_area=(0.01, 0.0), fill_holes=(True, False)), base]
    presence = np.array([0.9, 0.2], dtype=np.float32)
    maps = index_maps(probs, sets, presence=presence)
    assert len(maps) == len(sets)
    assert all(np.array_equal(m, index_map(probs, p, presence=presence)) for m, p in zip(maps, sets))
    assert not np.array_equal(maps[0], maps[1]) and not np.array_equal(maps[0], maps[2])


def test_min_area_drops_small_8_connected_components_as_a_fraction_of_the_image():
    probs = np.zeros((1, 20, 20), dtype=np.float32)
    probs[0, 2:6, 2:6] = 0.9  # 16 px
    probs[0, 6, 6] = 0.9  # touches it diagonally: one 8-connected component of 17
    probs[0, 15:17, 15:17] = 0.9  # 4 px
    pred = lambda area: index_map({"a": probs}, ImageEnsembleParams({"a": (1,)}, (0.5,), (area,)))  # noqa: E731
    assert pred(0.0).sum() == 21
    assert pred(5 / 400).sum() == 17 and pred(17 / 400).sum() == 17 and pred(18 / 400).sum() == 0
    # the same fraction on the image at half resolution keeps the same components
    half = index_map({"a": probs[:, ::2, ::2]}, ImageEnsembleParams({"a": (1,)}, (0.5,), (5 / 400,)))
    assert half[1:4, 1:4].sum() > 0 and half[7:9, 7:9].sum() == 0


def test_fill_holes_fills_background_only_and_is_binary_fill_holes():
    probs = np.zeros((2, 12, 12), dtype=np.float32)
    probs[0, 2:10, 2:10] = 0.9
    probs[0, 4:6, 4:6] = 0.0  # a background hole
    probs[0, 7, 7], probs[1, 7, 7] = 0.0, 0.9  # a pixel of class 2 inside class 1
    params = ImageEnsembleParams({"a": (1, 1)}, (0.5, 0.5), fill_holes=(True, False))
    out = index_map({"a": probs}, params)
    assert (out[4:6, 4:6] == 1).all() and out[7, 7] == 2
    assert (index_map({"a": probs}, ImageEnsembleParams({"a": (1, 1)}, (0.5, 0.5)))[4:6, 4:6] == 0).all()
    rng = np.random.default_rng(0)
    for sigma in (0, 1, 3):
        noise = rng.random((40, 50))
        mask = (ndimage.gaussian_filter(noise, sigma) if sigma else noise) > 0.5
        assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


# ---- the tuner on fabricated runs --------------------------------------------------------------
@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake2d")
    runs = fabricate(root, images=24, models=2, size=(48, 40), folds=3, seed=0, n_classes=2)
    return root, runs


@pytest.fixture(scope="module")
def tuned(fake):
    root, runs = fake
    lines = []
    record = tune(TuneOptions(runs=tuple(runs), out=root / "ensemble.json"), log=lines.append)
    return record, "\n".join(lines)


def test_tuned_file_is_the_2d_record_and_loads_back(fake, tuned):
    root, _ = fake
    record, printed = tuned
    assert record["dims"] == "2d" and record["auxiliary"] == [] and record["gate"] is None and record["crop"] is None
    scores = record["scores"]
    for row in [*scores["models"].values(), scores["plain_mean"], scores["tuned_in_sample"], scores["tuned_held_out"]]:
        assert set(row) == {"score", "dice", "jaccard"} and row["score"] == row["dice"] >= row["jaccard"]
    assert set(scores["held_out_by_fold"]) == {"0", "1", "2"} and scores["choice"]["images"] == 24
    assert scores["written"]["name"] in scores["choice"]["candidates"]
    assert record["oof"]["images"] == 24 and record["oof"]["metric"] == "dice" and record["oof"]["folds"] == [0, 1, 2]
    ensemble = load_ensemble(root / "ensemble.json")
    assert ensemble.dims == "2d" and isinstance(ensemble.params, ImageEnsembleParams)
    assert ensemble.params.to_dict() == record["params"] and [m.name for m in ensemble.members] == list(
        record["params"]["weights"])
    assert "jaccard" in printed and "final choice (held-out, 24 images)" in printed and "written:" in printed
    # a tuned ensemble beats both models alone here (their specks and holes are what it removes)
    assert scores["tuned_held_out"]["score"] > max(s["score"] for s in scores["models"].values())


def test_each_parts_held_out_contribution_is_scored_without_it(tuned):
    record, printed = tuned
    rows = {r["component"]: r for r in record["scores"]["contributions"]}
    assert list(rows) == ["model m0", "model m1", "thresholds", "gate", "min component size", "hole filling"]
    assert rows["gate"]["note"] == "not used" and rows["gate"]["score"] is None  # no gate run
    assert "held-out contribution" in printed
    held_out = record["scores"]["tuned_held_out"]["score"]
    scored = [r for r in rows.values() if r["score"] is not None]
    assert scored and all(r["delta"] == pytest.approx(held_out - r["score"], abs=2e-6) for r in scored)


def test_workers_share_the_images_and_change_no_result(fake, tuned, tmp_path):
    root, runs = fake
    record, _ = tuned
    two = tune(TuneOptions(runs=tuple(runs), out=tmp_path / "two.json", workers=2), log=lambda line: None)
    assert two["search"]["workers"] == 2 and record["search"]["workers"] == 1
    assert two["search"]["workers_peak_rss_gb"] > 0 and record["search"]["workers_peak_rss_gb"] == 0
    assert two["params"] == record["params"] and two["scores"] == record["scores"]
    assert two["search"]["evaluations"] == record["search"]["evaluations"]
    assert two["search"]["proxy"] == record["search"]["proxy"]  # the same proxies, split in two


def test_the_benchmark_compares_worker_counts_on_the_same_oof(tmp_path, capsys):
    from src.bench.ensemble2d import main as bench_main

    assert bench_main(["--images", "8", "--size", "48x32", "--folds", "2", "--workers", "1,2", "--repeats", "1",
                       "--work", str(tmp_path), "--out", str(tmp_path / "t.csv")]) == 0
    row = pd.read_csv(tmp_path / "t.csv").iloc[0]
    assert row["workers"] == 1 and row["images"] == 8 and row["ratio_w2"] > 0 and row["wall_s_w2"] > 0
    assert row["index_map_s"] > 0 and row["proxy_eval_s"] > 0 and list(tmp_path.glob("ens2d_*")) == []


def test_2d_ablations_reset_one_part_in_every_fold():
    tuned = ImageEnsembleParams({"a": (1.0, 1.0), "b": (0.0, 1.0)}, (0.4, 0.5), (1e-3, 0.0), (False, False), (0.3, 0.0))
    by_fold = {0: tuned, 1: dataclasses.replace(tuned, min_area=(0.0, 0.0))}
    out = {a.component: a for a in contributions.ablations(by_fold)}
    assert out["hole filling"].note == "not used" and out["hole filling"].params is None
    assert out["model a"].note.startswith("skipped: nothing left in fold 0")  # a alone weighs class 1
    assert all(p.min_area == (0.0, 0.0) and p.thresholds == (0.4, 0.5)
               for p in out["min component size"].params.values())
    assert out["gate"].params[0].gate_threshold == (0.0, 0.0) and not out["gate"].params[1].gated
    assert out["thresholds"].params[1].thresholds == (0.5, 0.5)


def test_the_search_never_ends_below_its_start(fake):
    root, runs = fake
    cache = ImageCache(root / "cache")
    sources = image_sources([TrainedRun.load(r) for r in runs], cache, log=lambda line: None)
    cases, _ = read_proxies(sources, cache, [1] * len(sources), [])
    evaluator = ImageEvaluator(cases, 2)
    space = ImageSearchSpace(("m0", "m1"), 2)
    for start in (ImageEnsembleParams.alone(["m0", "m1"], "m1", 2, 0.5),
                  ImageEnsembleParams.plain_mean(["m0", "m1"], 2, 0.7)):
        found = coordinate_descent(evaluator, space, start=start, rules=SearchRules(passes=1, se_factor=0))
        assert found.result.score >= evaluator.score(start).score
    shared = ImageSearchSpace(("m0", "m1"), 2, per_class=False)
    found = coordinate_descent(evaluator, shared, start=start, rules=SearchRules(passes=1))
    assert found.params.thresholds[0] == found.params.thresholds[1]


def test_proxy_scores_agree_with_exact_ones(fake, monkeypatch, tmp_path):
    root, runs = fake
    cache = ImageCache(root / "cache")
    sources = image_sources([TrainedRun.load(r) for r in runs], cache, log=lambda line: None)
    sets = [ImageEnsembleParams.plain_mean(["m0", "m1"], 2, 0.5),
            ImageEnsembleParams({"m0": (2, 1), "m1": (1, 0)}, (0.4, 0.6), (1e-2, 3e-3), (True, False))]
    cases, exact = read_proxies(sources, cache, [2] * len(sources), sets)
    assert all(c.probs["m0"].dtype == np.uint8 and c.truth.shape == (20, 24) for c in cases)
    for params, result in zip(sets, exact):
        assert abs(ImageEvaluator(cases, 2).score(params).score - result.score) < 0.02
    assert [r.score for r in stream(sources, cache, sets)] == [r.score for r in exact]
    monkeypatch.setattr(oof2d, "PROXY_SIDE", 24)  # the tuner's own proxies at stride 2
    record = tune(TuneOptions(runs=tuple(runs), out=tmp_path / "e.json", holdout_folds=()), log=lambda line: None)
    proxy = record["search"]["proxy"]
    assert proxy["strides"] == [2, 2]
    assert abs(proxy["in_sample_score"] - record["scores"]["tuned_in_sample"]["score"]) < 0.02
    assert "tuned_held_out" not in record["scores"] and record["search"]["held_out_folds"] == []


@pytest.mark.parametrize("flag,value", [("crop", Path("runs/det")), ("stride", 2), ("screen", 4)])
def test_gi_options_are_refused_on_2d_data(fake, tmp_path, flag, value):
    _, runs = fake
    with pytest.raises(DataError, match=f"^--{flag}: applies to the GI data only, .* holds 2D images$"):
        tune(TuneOptions(runs=tuple(runs), out=tmp_path / "e.json", **{flag: value}), log=lambda line: None)


def test_runs_must_share_labels_and_folds(fake, tmp_path):
    _, runs = fake
    other = fabricate(tmp_path / "one", images=4, models=1, size=(16, 16), folds=2, seed=1, n_classes=1)
    with pytest.raises(DataError, match="--runs .*m0: trained on labels"):
        tune(TuneOptions(runs=(runs[0], other[0]), out=tmp_path / "e.json"), log=lambda line: None)
    moved = tmp_path / "moved"
    shutil.copytree(runs[1], moved)
    for name in ("fold0", "fold1"):  # swap two folds' images
        (moved / name).rename(moved / f"{name}.x")
    (moved / "fold0.x").rename(moved / "fold1")
    (moved / "fold1.x").rename(moved / "fold0")
    with pytest.raises(DataError, match="is in fold 1 but in fold 0"):
        tune(TuneOptions(runs=(runs[0], moved), out=tmp_path / "e.json"), log=lambda line: None)
    with pytest.raises(DataError, match="--holdout-folds 7: no OOF image is in that fold"):
        tune(TuneOptions(runs=tuple(runs), out=tmp_path / "e.json", holdout_folds=(7,)), log=lambda line: None)


@pytest.mark.parametrize("change,message", [
    (lambda r: r["params"].update(sizes=[1, 2]), "unknown ensemble parameter"),
    (lambda r: r["params"].update(thresholds=[0.5, 1.5]), r"bad ensemble parameters \(thresholds"),
    (lambda r: r["params"].update(min_area=[0.1]), r"bad ensemble parameters \(min_area: expected 2"),
    (lambda r: r["params"].update(fill_holes=["yes", False]), r"bad ensemble parameters \(fill_holes"),
    (lambda r: r["params"]["weights"].update(ghost=[1, 1]), "do not match the weighted models"),
    (lambda r: r.update(gate="runs/cls"), "gate: run 'runs/cls' is not described under 'auxiliary'"),
    (lambda r: r["runs"][0]["predict"].update(gate="runs/cls"), r"runs\[0\].predict: a 2D member has no gate"),
    (lambda r: r.update(dims="3d"), "dims '3d'"),
])
def test_a_bad_2d_file_is_a_one_line_error_naming_it(fake, tuned, tmp_path, change, message):
    record = json.loads((fake[0] / "ensemble.json").read_text())
    change(record)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(record))
    with pytest.raises(DataError, match=message) as err:
        load_ensemble(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


# ---- submit --ensemble on a tiny Carvana set ---------------------------------------------------
@pytest.fixture(scope="module")
def car(tmp_path_factory):
    """A tiny Carvana set, run `a` trained one epoch on fold 0, and `b`: `a` with its head perturbed."""
    root = tmp_path_factory.mktemp("car2d")
    generate_dataset("carvana", root / "car", cars=2, test_cars=1, views=3, size=(48, 32))
    make_folds(root / "car", n_folds=2, seed=0).to_csv(root / "folds.csv", index=False)
    train(Seg2DConfig(data_dir=str(root / "car"), cache_dir=str(root / "cache"), folds_csv=str(root / "folds.csv"),
                      out=str(root / "runs"), name="a", fold="0", arch="unet_tiny", img_size=32, batch_size=4,
                      epochs=1, workers=0, device="cpu"))
    shutil.copytree(root / "runs" / "a", root / "runs" / "b")
    checkpoint = torch.load(root / "runs" / "b" / "fold0" / "best.pt", weights_only=True)
    last = [k for k, v in checkpoint["model"].items() if v.dtype.is_floating_point][-1]
    checkpoint["model"][last] += 0.5  # the last bias: every probability shifts
    torch.save(checkpoint, root / "runs" / "b" / "fold0" / "best.pt")
    return root


def _ensemble_file(root: Path, name: str, params: ImageEnsembleParams) -> Path:
    members = [EnsembleMember.of(TrainedRun.load(root / "runs" / n)) for n in params.weights]
    write_ensemble_file(root / name, members, [], None, None, params, dims="2d")
    return root / name


def _submit(*flags) -> None:
    assert submit_main([*map(str, flags), "--device", "cpu"]) == 0


def test_a_neutral_ensemble_submits_exactly_the_plain_mean(car):
    neutral = _ensemble_file(car, "neutral.json", ImageEnsembleParams.plain_mean(["a", "b"], 1, 0.5))
    _submit("--ensemble", neutral, "--data-dir", car / "car", "--out", car / "neutral.csv")
    _submit("--runs", car / "runs" / "a", car / "runs" / "b", "--data-dir", car / "car", "--out", car / "mean.csv")
    assert (car / "neutral.csv").read_bytes() == (car / "mean.csv").read_bytes()
    _submit("--runs", car / "runs" / "a", "--data-dir", car / "car", "--out", car / "a.csv")
    assert (car / "neutral.csv").read_bytes() != (car / "a.csv").read_bytes()  # b counts


def test_a_tuned_ensemble_writes_a_valid_csv_and_label_images(car):
    params = ImageEnsembleParams({"a": (2.0,), "b": (1.0,)}, (0.4,), (0.05,), (True,))
    tuned = _ensemble_file(car, "tuned.json", params)
    _submit("--ensemble", tuned, "--data-dir", car / "car", "--out", car / "tuned.csv")
    sub = pd.read_csv(car / "tuned.csv", keep_default_na=False)
    sample = pd.read_csv(car / "car" / "sample_submission.csv")
    assert list(sub.columns) == ["img", "rle_mask"] and sorted(sub["img"]) == sorted(sample["img"])
    out = car / "labels"
    _submit("--ensemble", tuned, "--data-dir", car / "car", "--images", car / "car" / "test", "--out", out)
    record = json.loads((out / "submission.json").read_text())
    assert record["ensemble"] == str(tuned) and record["count"] == len(sample)
    description = CARVANA.describe(car / "car")
    test = CARVANA.samples(car / "car", "test").samples[0]
    image = ImageInput.of(test.id, CARVANA.read_image(test, description))
    probs = {n: RunPredictor(TrainedRun.load(car / "runs" / n), ("0",), "test", (),
                             cache_dir=car / "cache").predict(image) for n in ("a", "b")}
    written = CARVANA.read_label(Sample(test.id, test.images, label=out / f"{test.id}.png"), description)
    assert np.array_equal(written, index_map(probs, params))


def test_submit_flags_and_ensemble_kinds_must_fit_the_data(car, tiny_dataset):
    neutral = _ensemble_file(car, "n2.json", ImageEnsembleParams.plain_mean(["a"], 1, 0.5))
    data = car / "car"
    for flags, message in ((("--threshold", "0.4"), "--threshold: applies to --runs only"),
                           (("--tta", "hflip"), "--tta: applies to --runs only"),
                           (("--runs", car / "runs" / "a"), "--runs: give --ensemble or --runs, not both")):
        with pytest.raises(DataError, match=message):
            _submit("--ensemble", neutral, "--data-dir", data, "--out", car / "x.csv", *flags)
    gi = car / "gi.json"
    write_ensemble_file(gi, [EnsembleMember.of(TrainedRun.load(car / "runs" / "a"))], [], None, None,
                        EnsembleParams.plain_mean({"a": "2d"}))
    with pytest.raises(DataError, match="an ensemble of the GI slices, .* holds 2D images"):
        _submit("--ensemble", gi, "--data-dir", data, "--out", car / "x.csv")
    slices = tiny_dataset()
    with pytest.raises(DataError, match="an ensemble of 2D image runs, .* holds the GI slices"):
        _submit("--ensemble", neutral, "--data-dir", slices.root, "--out", car / "y.csv")
    assert not (car / "x.csv").exists() and not (car / "y.csv").exists()


def test_the_bootstrap_resamples_groups_not_their_correlated_images():
    """Views of one car share their errors: a gain that holds on a few cars only must not look sure.
    Images without a group are each their own (the per-image bootstrap)."""
    from src.ensembling.search2d import ImageResult
    from src.ensembling.uncertainty import paired_gain_se, score_over

    cars, views = 4, 16
    ids = [f"car{c}_{v:02d}" for c in range(cars) for v in range(views)]
    gain = np.repeat([0.03, -0.01, 0.02, -0.02], views)  # per car: shared by its views
    old_dice = np.full(len(ids), 0.9)

    def result(groups, dice):
        return ImageResult(tuple(ids), tuple(groups), dice, dice)

    by_car = [i.split("_")[0] for i in ids]
    old, new = result(by_car, old_dice), result(by_car, old_dice + gain)
    assert old.terms().n_units == cars and score_over(new, ids) == pytest.approx(new.score)
    alone_old, alone_new = result(ids, old_dice), result(ids, old_dice + gain)
    assert alone_old.terms().n_units == len(ids)
    se_cars, se_images = paired_gain_se(new, old), paired_gain_se(alone_new, alone_old)
    assert se_cars > 2 * se_images > 0  # 4 cars, not 64 independent images


def test_a_tta_oof_of_a_2d_run_is_what_the_tuner_reads_and_the_submission_predicts_with(car, tmp_path):
    """src.predict --split oof --tta hflip on 2D runs: each validation image by its fold model, mirrored
    and back, averaged; the tuner's member then predicts test images with the same flips."""
    from src.predict import main as predict_main

    run = shutil.copytree(car / "runs" / "a", tmp_path / "runs" / "t")
    assert predict_main(["--run", str(run), "--split", "oof", "--tta", "hflip", "--device", "cpu"]) == 0
    loaded = TrainedRun.load(run)
    manifest = loaded.manifest("oof")
    assert manifest["tta"] == ["hflip"] and sorted(manifest["case_days"]) == sorted(loaded.folds["0"].val_case_days)
    key = manifest["case_days"][0]
    fold = RunPredictor(loaded, ("0",), "oof", (), cache_dir=car / "cache").folds[0]
    image = ImageInput.of(key, *ImageCache(car / "cache").load(key))
    plain, mirrored = fold.predict(image), fold.predict(ImageInput(key, image.image[..., ::-1].copy()))
    expected = (plain + mirrored[..., ::-1]) / 2
    saved = np.load(loaded.prediction_files("oof")[key])
    assert np.allclose(saved, expected.astype(np.float16), atol=1e-3)
    assert EnsembleMember.of(loaded).predict.tta == ("hflip",)
    for flags, message in ((("--split", "test"), "test images are predicted where they lie by python -m src.submit"),
                           (("--split", "oof", "--gate-rule", "5:0.5"), "--gate-rule: an option of the GI slices")):
        with pytest.raises(DataError, match=message):
            predict_main(["--run", str(run), *flags, "--device", "cpu"])

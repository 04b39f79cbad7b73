"""The tuner at scale: proxy cases on a coarser grid, the screening sample, shards in worker
processes, the memory budget's grid, and the exact rescoring of what the search found."""
import dataclasses

import numpy as np
import pytest
from test_ensemble import GROUPS2, SHAPE, _blobs, _model_probs, fake  # noqa: F401  (fixture)

from src.core.errors import DataError
from src.ensembling.oof import case_sources
from src.ensembling.params import EnsembleParams
from src.ensembling.postprocess import apply_ensemble
from src.ensembling.search import (
    Evaluator,
    SearchRules,
    SearchSpace,
    coordinate_descent,
    grid_params,
    make_case,
    quantise,
    screening_sample,
)
from src.ensembling.shards import ShardedEvaluator, choose_stride
from src.inference.runs import TrainedRun
from src.metrics.competition import aggregate, score_volumes


def test_proxy_masks_are_the_exact_masks_on_the_grid():
    """With probabilities far from every threshold, a stride-3 proxy's masks (threshold, crop, z clean-up)
    are the exact masks at the grid's rows and columns, the crop box included."""
    rng = np.random.default_rng(5)
    truth = _blobs(rng)
    probs = {"a": np.where(_model_probs(truth, rng, 1.0, 2, noise=0.0) > 0.5, 0.8, 0.1).astype(np.float16)}
    box = (5, 27, 4, 31)
    params = EnsembleParams(weights={"a": (1, 1, 1)}, groups={"a": "2d"}, thresholds=(0.5, 0.4, 0.6),
                            z_min_run=(0, 2, 0), crop=True)
    exact = apply_ensemble(probs, None, params, box)
    proxy = make_case("case1_day0", 0, probs, truth, None, box, stride=3)
    z, y, x = proxy.roi
    assert proxy.probs["a"].dtype == np.uint8 and proxy.stride == 3
    assert proxy.probs["a"].shape == exact[z, :, y.start:y.stop:3, x.start:x.stop:3].shape
    on_grid = grid_params(params, 3)
    masks = np.stack([Evaluator([proxy])._class(proxy, on_grid, c)[0] for c in range(3)], axis=1)
    assert masks.any() and np.array_equal(masks, exact[z, :, y.start:y.stop:3, x.start:x.stop:3])


def test_grid_params_scale_probabilities_and_counts():
    params = EnsembleParams(weights={"a": (1, 1, 1)}, groups={"a": "2d"}, thresholds=(0.4, 0.5, 0.6),
                            gate_pixels=(0, 30, 2), gate_prob=(0.5, 0.6, 0.7), min_size=(100, 0, 3))
    on_grid = grid_params(params, 4)
    assert on_grid.thresholds == pytest.approx((102, 127.5, 153)) and on_grid.gate_prob[1] == pytest.approx(153)
    assert on_grid.gate_pixels == (0, 2, 1) and on_grid.min_size == (6, 0, 1)  # a count that was on stays on
    assert quantise(np.array([0.0, 0.5, 1.0])).tolist() == [0, 128, 255]


def test_proxy_scores_estimate_exact_scores():
    rng = np.random.default_rng(6)
    full, exact, proxy = [], [], []
    for i in range(4):
        truth = _blobs(rng)
        probs = {"a": _model_probs(truth, rng, 1.0, 2), "b": _model_probs(truth, rng, 2.0, 1)}
        full.append((f"case{i}_day0", probs, truth))
        exact.append(make_case(f"case{i}_day0", i % 2, probs, truth))
        proxy.append(make_case(f"case{i}_day0", i % 2, probs, truth, stride=2))
    params = dataclasses.replace(EnsembleParams.plain_mean(GROUPS2), thresholds=(0.4, 0.5, 0.45), min_size=(8, 8, 8))
    truth_score = score_volumes((cd, apply_ensemble(p, None, params), t) for cd, p, t in full).score
    assert Evaluator(exact).score(params).score == truth_score
    assert Evaluator(proxy).score(params).score == pytest.approx(truth_score, abs=0.05)
    assert sum(c.nbytes for c in proxy) < sum(c.nbytes for c in exact) / 5  # 4x fewer voxels, 1 byte each


def test_screening_sample_and_screened_search():
    assert screening_sample(list(range(10)), 6) is None and screening_sample(list(range(10)), 0) is None
    assert screening_sample(list(range(12)), 4) == [0, 3, 6, 9]
    rng = np.random.default_rng(7)
    cases = []
    for i in range(8):
        truth = _blobs(rng)
        probs = {"a": _model_probs(truth, rng, 1.0, 2), "b": _model_probs(truth, rng, 2.0, 2)}
        cases.append(make_case(f"case{i}_day0", i % 2, probs, truth, stride=1))
    space = SearchSpace.for_cases(cases, GROUPS2)
    counted = []

    class Counting(Evaluator):
        def score(self, params, cases=None):
            counted.append(len(self.cases if cases is None else cases))
            return super().score(params, cases)

    plain = Counting(cases).score(EnsembleParams.plain_mean(GROUPS2)).score
    counted.clear()
    full = coordinate_descent(Counting(cases), space, rules=SearchRules(passes=1))
    on_all = counted.count(8)
    counted.clear()
    screened = coordinate_descent(Counting(cases), space, rules=SearchRules(passes=1, screen=3))
    assert counted.count(3) > 0 and counted.count(8) < on_all / 2  # most candidates only met the sample
    assert screened.result.score >= plain and full.result.score >= screened.result.score - 0.05


def _sources(fake, names=("sharp", "vol")):
    root, runs, _ = fake
    return case_sources([TrainedRun.load(runs[n]) for n in names], root / "cache", log=lambda line: None)


def test_shards_in_processes_score_like_one_shard_and_rescore_exactly(fake):
    root, runs, folds = fake
    sources = _sources(fake)
    groups = {"sharp": "2d", "vol": "3d"}
    plain = EnsembleParams.plain_mean(groups)
    tuned = dataclasses.replace(plain, thresholds=(0.4, 0.55, 0.45), min_size=(4, 0, 4), z_min_run=(2, 0, 0))
    by_fold = {0: plain, 2: tuned}  # fold 1 not held out
    with ShardedEvaluator(sources, 2, workers=1, baseline=[plain]) as one, \
            ShardedEvaluator(sources, 2, workers=2, baseline=[plain]) as two:
        assert one.score(tuned).score == two.score(tuned).score
        assert one.score(by_fold).per_case_day.equals(two.score(by_fold).per_case_day)
        assert one.baseline_results[0].score == two.baseline_results[0].score
        exact_tuned, exact_by_fold = two.exact([tuned, by_fold])
        assert two.workers_peak_rss_gb() > 0 and one.workers_peak_rss_gb() == 0
    truth = {s.case_day: np.load(root / "cache" / "train" / s.case_day / "mask.npy") > 0 for s in sources}
    probs = {s.case_day: {n: np.load(p) for n, p in s.files.items()} for s in sources}
    expected = score_volumes((cd, apply_ensemble(probs[cd], None, tuned), truth[cd]) for cd in truth)
    assert [cd for cd, _ in exact_tuned] == list(truth)  # the sources' order, whatever the shards
    assert aggregate(exact_tuned).score == pytest.approx(expected.score, abs=1e-12)
    held = [(cd, apply_ensemble(probs[cd], None, by_fold[folds[cd]]), truth[cd]) for cd in truth if folds[cd] in by_fold]
    assert aggregate(exact_by_fold).score == pytest.approx(score_volumes(held).score, abs=1e-12)
    plain_exact = score_volumes((cd, apply_ensemble(probs[cd], None, plain), truth[cd]) for cd in truth)
    assert one.baseline_results[0].score == pytest.approx(plain_exact.score, abs=1e-12)


def test_a_bad_file_in_a_worker_is_one_clear_error(fake, tmp_path):
    sources = _sources(fake)
    bad = tmp_path / "nan.npy"
    array = np.load(sources[1].files["vol"]).copy()
    array[0, 0, 0, 0] = np.nan
    np.save(bad, array)
    sources[1] = dataclasses.replace(sources[1], files={**sources[1].files, "vol": bad})
    with pytest.raises(DataError, match=r"nan\.npy: holds NaN"):
        ShardedEvaluator(sources, 1, workers=2)


def test_the_memory_budget_picks_the_grid():
    shapes = [(144, 3, 266, 266)] * 274
    assert choose_stride(shapes[:10], 2, 8.0, 2) == 3  # at most 96 px a side
    assert choose_stride(shapes[:10], 2, 8.0, 2, side=512) == 1
    coarse = choose_stride(shapes, 10, 8.0, 2)
    assert coarse > choose_stride(shapes, 2, 8.0, 2) >= 1
    assert choose_stride(shapes, 10, 64.0, 2, side=512) < coarse
    with pytest.raises(DataError, match="--memory-gb 1.0: too little"):
        choose_stride(shapes, 10, 1.0, 2)

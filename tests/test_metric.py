"""The metric: exact fast Hausdorff vs the naive one, the empty-set rules, Dice averaging, protocols."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from src.metrics import competition as metric

SHAPES = st.tuples(st.integers(1, 6), st.integers(1, 12), st.integers(1, 12))


@st.composite
def volume_pairs(draw, empty_allowed: bool = True):
    """Two bool (Z, H, W) volumes of one random (often non-cubic) shape, sparse or dense."""
    shape = draw(SHAPES)
    pair = []
    for _ in range(2):
        density = draw(st.sampled_from([0.02, 0.1, 0.5, 0.9]))
        noise = draw(arrays(np.float64, shape, elements=st.floats(0, 1, allow_nan=False)))
        pair.append(noise < density)
    if not empty_allowed:
        for vol in pair:
            vol.flat[draw(st.integers(0, vol.size - 1))] = True
    return tuple(pair)


def _dist(a, b, shape) -> float:
    return math.dist(np.divide(a, shape), np.divide(b, shape)) / math.sqrt(3)


@pytest.mark.parametrize("path", ["auto", "kd-tree", "transform"])
@settings(max_examples=150, deadline=None)
@given(pair=volume_pairs())
def test_fast_hausdorff_equals_naive(pair, path):
    """Each of the two exact paths (KD-tree over the boundary, distance transform) on its own too."""
    pred, truth = pair
    with pytest.MonkeyPatch.context() as patch:
        if path != "auto":
            patch.setattr(metric, "_use_transform", lambda *counts: path == "transform")
        fast = metric.hausdorff_3d(pred, truth)
    naive = metric.hausdorff_naive(pred, truth)
    assert (math.isnan(fast) and math.isnan(naive)) or abs(fast - naive) <= 1e-9


@settings(max_examples=60, deadline=None)
@given(pair=volume_pairs(), data=st.data())
def test_hausdorff_of_a_crop_with_the_whole_shape_equals_the_whole(pair, data):
    """The ensemble tuner scores crops that hold every voxel: with `shape` the result is the whole's."""
    pred, truth = pair
    either = pred | truth
    box = metric._bbox(either) if either.any() else tuple(slice(0, 0) for _ in pred.shape)
    pad = [data.draw(st.integers(0, 2)) for _ in range(6)]  # a crop a little larger than the voxels' box
    crop = tuple(slice(max(s.start - pad[2 * i], 0), s.stop + pad[2 * i + 1]) for i, s in enumerate(box))
    whole = metric.hausdorff_3d(pred, truth)
    cropped = metric.hausdorff_3d(pred[crop], truth[crop], shape=pred.shape,
                                   origin=tuple(c.start for c in crop))
    assert (math.isnan(whole) and math.isnan(cropped)) or cropped == whole


@settings(max_examples=60, deadline=None)
@given(pair=volume_pairs(), others=st.lists(arrays(np.float64, (6, 12, 12), elements=st.floats(0, 1)), max_size=3),
       data=st.data())
def test_hausdorff_to_a_fixed_truth_equals_hausdorff_3d_to_the_bit(pair, others, data):
    """The tuner's exact pass scores many predictions of one case-day against its truth's cached tree,
    on a crop of the volume (its region of interest)."""
    pred, truth = pair
    pad = [data.draw(st.integers(0, 2)) for _ in range(3)]
    shape = tuple(n + p for n, p in zip(pred.shape, pad))
    fixed = metric.HausdorffToTruth(truth, shape=shape, origin=tuple(pad))
    for p in [pred, truth] + [(o[:pred.shape[0], :pred.shape[1], :pred.shape[2]] < 0.3) for o in others]:
        expected = metric.hausdorff_3d(p, truth, shape=shape, origin=tuple(pad))
        got = fixed(p)
        assert (math.isnan(expected) and math.isnan(got)) or got == expected


def test_untrained_prediction_takes_the_transform_and_stays_exact():
    """Half the volume predicted (an untrained model): the KD-tree path would query every voxel."""
    rng = np.random.default_rng(0)
    truth = np.zeros((12, 40, 44), bool)
    truth[4:8, 10:20, 12:25] = True
    pred = rng.random(truth.shape) > 0.5
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metric, "_farthest_by_transform",
                      lambda *a, real=metric._farthest_by_transform: calls.append(1) or real(*a))
        fast = metric.hausdorff_3d(pred, truth)
    assert calls and fast == pytest.approx(metric.hausdorff_naive(pred, truth), abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(SHAPES, st.data())
def test_single_voxels(shape, data):
    a = tuple(data.draw(st.integers(0, n - 1)) for n in shape)
    b = tuple(data.draw(st.integers(0, n - 1)) for n in shape)
    pred, truth = np.zeros(shape, bool), np.zeros(shape, bool)
    pred[a], truth[b] = True, True
    assert metric.hausdorff_3d(pred, truth) == pytest.approx(_dist(a, b, shape), abs=1e-12)
    assert metric.hausdorff_naive(pred, truth) == pytest.approx(_dist(a, b, shape), abs=1e-12)


def test_farthest_point_inside_the_prediction():
    """A solid ball inside a hollow shell: the farthest voxel is the ball's centre, not its surface."""
    z, y, x = np.ogrid[:21, :23, :25]
    r = np.sqrt((z - 10) ** 2 + (y - 11) ** 2 + (x - 12) ** 2)
    ball, shell = r <= 4, (r >= 9) & (r <= 10)
    expected = metric.hausdorff_naive(ball, shell)
    assert metric.hausdorff_3d(ball, shell) == pytest.approx(expected, abs=1e-12)
    assert expected > metric.hausdorff_naive(ball & ~ndimage.binary_erosion(ball), shell)


@settings(max_examples=100, deadline=None)
@given(volume_pairs())
def test_boundary_is_the_six_connected_erosion_boundary(pair):
    mask = pair[0]
    eroded = ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1), border_value=1)
    np.testing.assert_array_equal(metric._boundary(mask), mask & ~eroded)


@pytest.mark.parametrize("fn", [metric.hausdorff_3d, metric.hausdorff_naive])
def test_empty_rules(fn):
    empty, full = np.zeros((3, 4, 5), bool), np.zeros((3, 4, 5), bool)
    full[1, 2, 3] = True
    assert math.isnan(fn(empty, empty))
    assert fn(full, empty) == 1.0 and fn(empty, full) == 1.0
    assert fn(full, full) == 0.0


def test_hausdorff_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes"):
        metric.hausdorff_3d(np.ones((2, 3, 4), bool), np.ones((2, 4, 3), bool))


def test_dice_rows_by_hand():
    pred, truth = np.zeros((2, 3, 4, 4), np.uint8), np.zeros((2, 3, 4, 4), np.uint8)
    pred[0, 0, :2], truth[0, 0, :1] = 1, 1  # 8 and 4 pixels, 4 shared
    truth[0, 1, 0, 0] = 1  # empty prediction of a non-empty truth
    pred[1, 2, 3, 3] = 1  # false positive on an empty truth
    rows = metric.dice_rows(pred, truth)
    assert rows.shape == (2, 3) and rows.dtype == np.float64
    assert rows[0, 0] == pytest.approx(2 * 4 / (8 + 4))
    assert rows[0, 1] == 0.0 and rows[1, 2] == 0.0
    assert np.isnan(rows[[0, 1, 1], [2, 0, 1]]).all()


def _case_day(rng, z: int, fill: float) -> np.ndarray:
    return (rng.random((z, 3, 6, 7)) < fill).astype(np.uint8)


def test_score_averages_dice_over_all_rows_not_case_days():
    rng = np.random.default_rng(0)
    pairs = [("case1_day0", _case_day(rng, 2, 0.3), _case_day(rng, 2, 0.3)),
             ("case1_day1", _case_day(rng, 7, 0.3), _case_day(rng, 7, 0.6))]
    pairs[0][1][0, 0] = pairs[0][2][0, 0] = 0  # one skipped row
    result = metric.score_volumes(pairs)
    rows = [metric.dice_rows(p, t) for _, p, t in pairs]
    dice = np.nanmean(np.concatenate([r.ravel() for r in rows]))
    hausdorff = np.mean([metric.hausdorff_naive(p.any(1), t.any(1)) for _, p, t in pairs])
    assert result.dice == pytest.approx(dice, abs=1e-12)
    assert result.dice != pytest.approx(np.mean([np.nanmean(r) for r in rows]), abs=1e-6)
    assert result.hausdorff == pytest.approx(hausdorff, abs=1e-12)
    assert result.score == pytest.approx(0.4 * dice + 0.6 * (1 - hausdorff), abs=1e-12)
    table = result.per_case_day
    assert table["case_day"].tolist() == ["case1_day0", "case1_day1"]
    assert table["n_rows_scored"].tolist() == [5, 21]
    assert table["dice"].tolist() == pytest.approx([np.nanmean(r) for r in rows])


def test_perfect_and_empty_conventions():
    rng = np.random.default_rng(1)
    truth = _case_day(rng, 4, 0.2)
    perfect = metric.score_volumes([("case1_day0", truth, truth.copy())])
    assert (perfect.score, perfect.dice, perfect.hausdorff) == (1.0, 1.0, 0.0)
    empty = np.zeros_like(truth)
    nothing = metric.score_volumes([("case1_day0", empty, empty), ("case2_day0", empty, empty)])
    assert (nothing.score, nothing.dice, nothing.hausdorff) == (1.0, 1.0, 0.0)
    assert nothing.per_case_day["dice"].isna().all() and nothing.per_case_day["hausdorff"].isna().all()
    assert (nothing.per_case_day["n_rows_scored"] == 0).all()
    missed = metric.score_volumes([("case1_day0", empty, truth)])
    assert (missed.score, missed.dice, missed.hausdorff) == (0.0, 0.0, 1.0)


def test_mlebench_oversize_rule():
    truth = np.zeros((4, 3, 10, 10), np.uint8)
    truth[1, 0, 4:6, 4] = 1  # 2 voxels
    within = truth.copy()
    within[1, 1, 0, :10] = 1
    within[2, 2, 0, :10] = 1  # 2 + 20 = 22 voxels, over 10x the truth's 2
    exactly = truth.copy()
    exactly[1, 1, 0, :9] = 1
    exactly[2, 2, 0, :9] = 1  # 2 + 18 = 20 voxels: exactly 10x, not over it
    for pred, oversize in ((within, True), (exactly, False)):
        kaggle = metric.score_case_day(pred, truth).hausdorff
        mle = metric.score_case_day(pred, truth, protocol="mlebench").hausdorff
        assert kaggle == pytest.approx(metric.hausdorff_naive(pred.any(1), truth.any(1)), abs=1e-12) and kaggle < 1
        assert mle == (1.0 if oversize else kaggle)


def test_bad_arguments():
    vol = np.zeros((2, 3, 4, 4), bool)
    with pytest.raises(ValueError, match="protocol"):
        metric.score_case_day(vol, vol, protocol="lb")
    with pytest.raises(ValueError, match="no case-days"):
        metric.score_volumes([])
    with pytest.raises(ValueError, match="shapes"):
        metric.dice_rows(vol, vol[:1])

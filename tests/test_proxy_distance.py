"""The proxy's Hausdorff (cached truth transform, offset table, KD-tree for the far voxels) equals the
exact Hausdorff on the same grid up to the transform's float16 rounding."""
import math

import numpy as np
import pytest
from scipy import ndimage

from src.ensembling.proxy_distance import TABLE_REACH, ProxyDistance, offset_table
from src.metrics.competition import hausdorff_3d

SCALE = (40.0, 88.67, 88.67)  # a 40-slice volume of 266 px on a stride-3 grid


def _blob(rng: np.random.Generator, shape, centre, radius) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 2) * 2
    return ((zz - centre[0]) ** 2 / 4 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) < (radius + noise) ** 2


def _pairs():
    rng = np.random.default_rng(0)
    shape = (24, 30, 30)
    truth = _blob(rng, shape, (12, 15, 15), 8)
    near = _blob(rng, shape, (12, 16, 14), 7)  # overlapping, a few cells off
    far = near.copy()
    far[0:2, 0:3, 0:3] = True  # a false positive far from the truth
    missed = near.copy()
    missed[20:23, 25:29, 25:29] = False
    truth_far = truth.copy()
    truth_far[21:24, 0:3, 26:30] = True  # a truth region the prediction misses, beyond the table
    return [(near, truth), (far, truth), (missed, truth), (near, truth_far), (truth, truth)]


@pytest.mark.parametrize("i", range(5))
def test_proxy_hausdorff_equals_the_exact_one_on_the_grid(i):
    pred, truth = _pairs()[i]
    expected = hausdorff_3d(pred, truth, shape=SCALE)
    assert ProxyDistance(truth, SCALE).hausdorff(pred) == pytest.approx(expected, rel=2e-3, abs=1e-9)


def test_far_missed_truth_goes_past_the_table():
    pred, truth = _pairs()[3]
    offsets, lengths = offset_table(SCALE)
    assert lengths.max() <= TABLE_REACH and np.all(np.diff(lengths) >= 0) and offsets.dtype == np.int32
    exact = hausdorff_3d(pred, truth, shape=SCALE)
    assert exact * math.sqrt(3) > TABLE_REACH  # the far region is beyond the table's reach ...
    assert ProxyDistance(truth, SCALE).hausdorff(pred) == pytest.approx(exact, rel=2e-3)  # ... and still found


def test_empty_rules():
    truth = np.zeros((4, 5, 6), bool)
    pred = truth.copy()
    assert math.isnan(ProxyDistance(truth, (4, 5, 6)).hausdorff(pred))
    pred[1, 1, 1] = True
    assert ProxyDistance(truth, (4, 5, 6)).hausdorff(pred) == 1.0
    assert ProxyDistance(pred, (4, 5, 6)).hausdorff(truth) == 1.0

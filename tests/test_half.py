"""Float16 probabilities through their bits (src.data.half) agree with numpy's float16 arithmetic."""
import numpy as np
import pytest

from src.data.half import above, add_scaled, all_finite, count_above, level_bits, mark_above
from src.ensembling.search import quantise


def _float32_samples(rng: np.random.Generator) -> np.ndarray:
    """float32 values over every float16 range, with every float16 rounding midpoint and its neighbours."""
    halves = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    middles = ((halves[:-1] + halves[1:]) / 2).astype(np.float32)
    return np.concatenate([
        rng.random(200_000, dtype=np.float32), rng.random(50_000, dtype=np.float32) * 1e-4,
        rng.random(50_000, dtype=np.float32) * 1e-7, rng.random(50_000, dtype=np.float32) * 70_000,
        -rng.random(50_000, dtype=np.float32), middles, np.nextafter(middles, np.float32(0)),
        np.nextafter(middles, np.float32(1e6)), -middles,
        np.array([np.inf, -np.inf, 0.0, -0.0, 65504, 65519.99, 65520], dtype=np.float32)])


@pytest.mark.parametrize("threshold", [0.0, 0.3, 1 / 3, 0.5, 0.55, 0.6, 0.7, 1.0, 127.5, 70_000.0])
def test_above_on_the_bits_equals_the_float_comparison(threshold):
    rng = np.random.default_rng(1)
    with np.errstate(over="ignore"):
        values = _float32_samples(rng).astype(np.float16)
    values = values[np.isfinite(values)]
    assert np.array_equal(above(values, threshold), values > np.float32(threshold))
    assert np.array_equal(above(values[::3], threshold), values[::3] > np.float32(threshold))  # strided


@pytest.mark.parametrize("threshold", [0.0, 76.5, 127.5, 153.0, 0.6 * 255, 254.9, 255.0, 300.0])
def test_above_on_uint8_proxies_uses_an_integer_level(threshold):
    values = np.arange(256, dtype=np.uint8)
    assert np.array_equal(above(values, threshold), values > np.float32(threshold))


def test_level_bits_is_the_largest_half_not_above_the_threshold():
    for t in (0.3, 0.5, 0.123456):
        level = np.uint16(level_bits(t)).view(np.float16)
        after = np.uint16(level_bits(t) + 1).view(np.float16)
        assert np.float32(level) <= np.float32(t) < np.float32(after)
    with pytest.raises(ValueError):
        level_bits(-0.1)


def test_all_finite_finds_nan_and_inf_in_float16_and_other_types():
    clean = np.random.default_rng(2).random((4, 3, 5, 5)).astype(np.float16)
    assert all_finite(clean)
    for bad in (np.nan, np.inf, -np.inf):
        broken = clean.copy()
        broken[3, 2, 4, 4] = bad
        assert not all_finite(broken)
        assert not all_finite(broken.astype(np.float32))


def test_add_scaled_sums_like_numpy_in_float32():
    rng = np.random.default_rng(3)
    probs = rng.random((6, 3, 7, 9)).astype(np.float16)
    got = np.zeros((6, 7, 9), np.float32)
    expected = np.zeros((6, 7, 9), np.float32)
    for c, w in ((0, 0.3), (2, 0.7)):
        add_scaled(got, probs[:, c], w)  # a strided class view
        expected += np.float32(w) * probs[:, c].astype(np.float32)
    assert np.array_equal(got, expected)
    add_scaled(got, probs[:, 1].astype(np.float32), 0.25)
    expected += np.float32(0.25) * probs[:, 1].astype(np.float32)
    assert np.array_equal(got, expected)


def test_mark_above_ors_every_class_and_reports_non_finite_values():
    rng = np.random.default_rng(4)
    probs = rng.random((5, 3, 8, 8)).astype(np.float16)
    active = np.zeros((5, 8, 8), bool)
    active[0, 0, 0] = True  # already set stays set
    assert mark_above(probs, 0.9, active)
    expected = (probs > np.float32(0.9)).any(axis=1)
    expected[0, 0, 0] = True
    assert np.array_equal(active, expected)
    probs[2, 1, 3, 3] = np.nan
    assert not mark_above(probs, 0.9, np.zeros((5, 8, 8), bool))


def test_quantise_of_float16_uses_the_same_rounding_as_float32():
    values = np.arange(0, 0x3C01, dtype=np.uint16).view(np.float16)  # every float16 in [0, 1]
    assert np.array_equal(quantise(values), np.rint(values.astype(np.float32) * 255).astype(np.uint8))
    assert np.array_equal(quantise(values.astype(np.float32)), quantise(values))


@pytest.mark.parametrize("dtype", [np.float16, np.uint8, np.float32])
def test_count_above_counts_per_slice_like_numpy(dtype):
    rng = np.random.default_rng(5)
    values = rng.random((4, 3, 9, 11))
    probs = (values * 255).astype(np.uint8) if dtype == np.uint8 else values.astype(dtype)
    threshold = 127.5 if dtype == np.uint8 else 0.6
    for c in range(3):  # strided class views, as the gate passes them
        expected = np.count_nonzero(probs[:, c] > np.float32(threshold), axis=(1, 2))
        assert np.array_equal(count_above(probs[:, c], threshold), expected)

"""RLE: the numba encoder matches the numpy reference byte for byte, decoding inverts it, bad RLE fails."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from src.data import rle

SHAPES = st.tuples(st.integers(1, 24), st.integers(1, 24))


@st.composite
def masks(draw):
    """A random mask of a random (often non-square) shape and density, as bool or uint8."""
    shape = draw(SHAPES)
    density = draw(st.sampled_from([0.0, 0.05, 0.5, 0.95, 1.0]))
    noise = draw(arrays(np.float64, shape, elements=st.floats(0, 1, exclude_max=True)))
    return (noise < density).astype(draw(st.sampled_from([bool, np.uint8])))


@settings(max_examples=300, deadline=None)
@given(masks())
def test_encode_matches_reference_and_round_trips(mask):
    text = rle.encode(mask)
    assert text == rle.encode_reference(mask)
    decoded = rle.decode(text, mask.shape)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, mask.astype(np.uint8))


@settings(max_examples=100, deadline=None)
@given(masks())
def test_column_major_decode_is_the_transpose(mask):
    text = rle.encode(mask)  # runs over a (H, W) mask in C order
    h, w = mask.shape
    np.testing.assert_array_equal(rle.decode(text, (w, h), order="F"), rle.decode(text, (h, w)).T)


@pytest.mark.parametrize("shape", [(5, 7), (7, 5), (1, 1), (1, 9)])
def test_empty_full_and_corners(shape):
    h, w = shape
    empty, full = np.zeros(shape, np.uint8), np.ones(shape, np.uint8)
    assert rle.encode(empty) == rle.encode_reference(empty) == ""
    assert rle.encode(full) == rle.encode_reference(full) == f"1 {h * w}"
    np.testing.assert_array_equal(rle.decode("", shape), empty)
    np.testing.assert_array_equal(rle.decode(f"1 {h * w}", shape), full)
    for r, c in [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]:
        mask = np.zeros(shape, np.uint8)
        mask[r, c] = 1
        assert rle.encode(mask) == rle.encode_reference(mask) == f"{r * w + c + 1} 1"
        np.testing.assert_array_equal(rle.decode(rle.encode(mask), shape), mask)


@pytest.mark.parametrize("text, message", [
    ("1 2 5", "odd number"),
    ("1 2 x 3", "non-integer"),
    ("1.5 2", "non-integer"),
    ("5 2 1 2", "not increasing"),
    ("1 3 2 2", "not increasing"),  # overlapping runs
    ("1 0", "non-positive length"),
    ("0 2", "start below 1"),
    ("19 3", "past the image"),
    ("30 1", "past the image"),
])
def test_malformed_rle_raises(text, message):
    with pytest.raises(ValueError, match=message):
        rle.decode(text, (4, 5))


def test_adjacent_runs_decode():
    np.testing.assert_array_equal(rle.decode("1 2 3 2", (1, 5)), [[1, 1, 1, 1, 0]])

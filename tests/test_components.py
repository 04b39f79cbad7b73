"""The numba component filter removes exactly what cc3d.dust (26-connectivity) removes."""
import cc3d
import numpy as np
import pytest
from scipy import ndimage

from src.ensembling.components import remove_small_components


@pytest.mark.parametrize("seed", range(6))
def test_remove_small_components_equals_cc3d_dust(seed):
    rng = np.random.default_rng(seed)
    for _ in range(10):
        shape = tuple(int(n) for n in rng.integers(1, 24, 3))
        mask = ndimage.gaussian_filter(rng.random(shape), rng.uniform(0.5, 1.5)) > rng.uniform(0.45, 0.6)
        for min_size in (0, 1, 2, 3, 8, 30, 200):
            expected = cc3d.dust(mask.copy(), threshold=min_size, connectivity=26) if min_size > 1 else mask
            got = remove_small_components(mask, min_size)
            assert np.array_equal(got, expected), (shape, min_size)


def test_diagonal_neighbours_join_and_the_input_is_untouched():
    mask = np.zeros((3, 4, 4), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = mask[2, 2, 2] = True  # one component through corners: 3 voxels
    mask[0, 3, 3] = True  # alone
    before = mask.copy()
    out = remove_small_components(mask, 2)
    assert np.array_equal(mask, before)
    assert out.sum() == 3 and not out[0, 3, 3]
    assert remove_small_components(mask, 4).sum() == 0
    assert remove_small_components(np.asfortranarray(mask), 2).sum() == 3  # any memory layout

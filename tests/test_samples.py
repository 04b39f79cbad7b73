"""The 2.5D sampler, geometry and augmentation."""
import numpy as np
import pytest
import torch

from src.data.augment import build_augment
from src.data.geometry import Geometry
from src.data.samples import (
    SliceDataset,
    StackSpec,
    intensity_window,
    normalise,
    tail_slices,
    volume_batches,
)
from src.data.volumes import VolumeCache, write_case_day


def test_stack_indices_center_and_start_clamped():
    assert StackSpec(3, 2, "center").indices(5, 20).tolist() == [3, 5, 7]
    assert StackSpec(3, 2, "center").indices(0, 20).tolist() == [0, 0, 2]
    assert StackSpec(5, 1, "center").indices(19, 20).tolist() == [17, 18, 19, 19, 19]
    assert StackSpec(3, 2, "start").indices(17, 20).tolist() == [17, 19, 19]
    with pytest.raises(ValueError):
        StackSpec(3, 0)


def test_normalisation_is_per_case_day_and_scale_free():
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 300.0, size=(6, 40, 30)).clip(0, 8000).astype(np.uint16)
    scaled = (image.astype(np.float64) * 8).astype(np.uint16)
    assert scaled.max() < 65535
    a = normalise(image[[1, 2, 3]], intensity_window(image))
    b = normalise(scaled[[1, 2, 3]], intensity_window(scaled))
    assert a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.abs(a - b).max() < 0.01


def test_tail_slices_marks_n_after_last_annotated():
    mask = np.zeros((10, 3, 4, 4), np.uint8)
    mask[2:6, 1, 1, 1] = 1
    assert np.flatnonzero(tail_slices(mask, 2)).tolist() == [6, 7]
    assert not tail_slices(mask, 0).any()
    assert not tail_slices(np.zeros_like(mask), 3).any()


@pytest.mark.parametrize("mode", ["resize", "letterbox"])
def test_geometry_round_trip_non_square(mode):
    geo = Geometry(64, mode)
    mask = np.zeros((62, 72), np.float32)
    mask[20:40, 10:50] = 1
    model_in = geo.to_model(mask[None])
    assert model_in.shape == (1, 64, 64) and geo.to_model(mask).shape == (64, 64)
    back = geo.from_model(torch.from_numpy(model_in)[None], 62, 72)[0, 0].numpy()
    assert back.shape == (62, 72)
    assert ((back > 0.5) == (mask > 0.5)).mean() > 0.97


def test_geometry_box_pastes_back_in_place():
    geo = Geometry(32, "letterbox")
    image = np.zeros((50, 60), np.float32)
    image[10:30, 20:40] = 1
    box = (5, 35, 15, 45)
    inp = geo.to_model(image, box)
    back = geo.from_model(torch.from_numpy(inp)[None, None], 50, 60, box)[0, 0].numpy()
    assert back[:5].sum() == 0 and back[:, :15].sum() == 0
    assert ((back > 0.5) == (image > 0.5)).mean() > 0.98


@pytest.fixture()
def tiny_cache(tmp_path):
    rng = np.random.default_rng(1)
    for cd, (z, h, w) in {"case1_day0": (12, 40, 48), "case2_day3": (8, 36, 36)}.items():
        image = rng.integers(0, 4000, size=(z, h, w), dtype=np.uint16)
        mask = np.zeros((z, 3, h, w), np.uint8)
        mask[3:7, 0, 10:20, 10:20] = 1
        mask[4, 2, 5:9, 5:9] = 1
        ids = [f"{cd}_slice_{i + 1:04d}" for i in range(z)]
        write_case_day(tmp_path, "train", cd, image, mask, {"ids": ids, "sx": 1.5, "sy": 1.5})
    return tmp_path


def test_dataset_samples_tiers(tiny_cache):
    spec, geo = StackSpec(5, 1), Geometry(32)
    full = SliceDataset(tiny_cache, ["case1_day0", "case2_day3"], spec, geo)
    assert len(full) == 20
    positive = SliceDataset(tiny_cache, ["case1_day0", "case2_day3"], spec, geo, positive_only=True)
    assert sorted(positive.items) == [(i, z) for i in (0, 1) for z in range(3, 7)]
    tail = SliceDataset(tiny_cache, ["case1_day0"], spec, geo, tail_drop=2)
    assert [z for _, z in tail.items] == [0, 1, 2, 3, 4, 5, 6, 9, 10, 11]
    item = full[4]
    assert item["image"].shape == (5, 32, 32) and item["mask"].shape == (3, 32, 32)
    assert item["presence"].tolist() == [1.0, 0.0, 1.0]


def test_augmentation_depends_on_seed_epoch_and_index_only(tiny_cache):
    make = lambda seed: SliceDataset(tiny_cache, ["case1_day0"], StackSpec(3, 1), Geometry(32),  # noqa: E731
                                     build_augment("strong"), seed=seed)
    a, b = make(3), make(3)
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(len(a)))
    changed = False
    for i in range(len(a)):
        first = a[i]["image"]
        a.set_epoch(1)
        changed |= not torch.equal(first, a[i]["image"])
        a.set_epoch(0)
    assert changed
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        build_augment("medium")


def test_volume_batches_cover_every_slice_in_order(tiny_cache):
    vol = VolumeCache(tiny_cache).load("case1_day0")
    seen = []
    for zs, batch in volume_batches(vol, StackSpec(3, 2), Geometry(32), batch_size=5):
        assert batch.shape == (len(zs), 3, 32, 32) and batch.dtype == torch.float32
        seen.extend(zs.tolist())
    assert seen == list(range(12))

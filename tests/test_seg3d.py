"""3D segmentation stage: crops, augmentation, the three inference designs, training end to end."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from src.core.errors import DataError
from src.data.folds import make_folds
from src.data.preparation import prepare
from src.data.samples import intensity_window, normalise
from src.data.synthetic import generate
from src.data.volume3d import CropDataset, build_augment3d, parse_roi
from src.data.volumes import CaseDay, VolumeCache
from src.engine.config import Seg3DConfig
from src.engine.seg3d import Seg3DTask
from src.models.registry import create_model, list_archs_table
from src.models.seg3d import Cascade3D, SlabNet, slab_apply
from src.train import main

ROI = "32,32,16"  # H,W,D


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny 3D convolutions run faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Case-days of 20 and 12 slices (shorter than the roi), 64x64 and 72 wide x 62 high; fold 0 holds
    the cases of a short and of a non-square case-day, fold 1 the others."""
    root = tmp_path_factory.mktemp("seg3d")
    generate(root / "data", cases=4, seed=0, sizes=[(72, 62), (64, 64)], slices=[20, 12], workers=1)
    prepare(root / "data", root / "cache", workers=1)
    cache = VolumeCache(root / "cache")
    shapes = {cd: cache.load(cd).shape for cd in cache.case_days()}
    short = next(cd for cd, s in shapes.items() if s[0] < parse_roi(ROI)[0])
    non_square = next(cd for cd, s in shapes.items() if s[1] != s[2])
    folds = make_folds(root / "data", n_folds=2, seed=0)
    val_cases = {int(cd.removeprefix("case").split("_")[0]) for cd in (short, non_square)}
    folds["fold"] = np.where(folds["case"].isin(val_cases), 0, 1)
    assert (folds["fold"] == 1).any()
    folds.to_csv(root / "folds.csv", index=False)
    return root


def config(work, **overrides) -> Seg3DConfig:
    values = dict(data_dir=str(work / "data"), cache_dir=str(work / "cache"), folds_csv=str(work / "folds.csv"),
                  out=str(work / "runs"), arch="segresnet3d_tiny", roi=ROI, batch_size=2, epochs=1, workers=0,
                  device="cpu", samples_per_volume=1)
    return Seg3DConfig(**{**values, **overrides})


def test_stage_trains_and_writes_oof_for_short_and_non_square_case_days(work):
    args = ["--stage", "seg3d", "--data-dir", str(work / "data"), "--cache-dir", str(work / "cache"),
            "--folds-csv", str(work / "folds.csv"), "--out", str(work / "runs"), "--fold", "0",
            "--arch", "segresnet3d_tiny", "--roi", ROI, "--epochs", "1", "--batch-size", "2", "--workers", "0",
            "--device", "cpu", "--samples-per-volume", "1", "--sw-overlap", "0.5"]
    assert main(args) == 0
    run = work / "runs" / "segresnet3d_tiny" / "fold0"
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["stage"] == "seg3d" and saved["config"]["roi"] == ROI
    cache = VolumeCache(work / "cache")
    shapes = [cache.load(cd).shape for cd in saved["val_case_days"]]
    assert any(s[0] < 16 for s in shapes) and any(s[1] != s[2] for s in shapes)
    for cd, (depth, height, width) in zip(saved["val_case_days"], shapes):
        oof = np.load(run / "oof" / f"{cd}.npy")
        assert oof.dtype == np.float16 and oof.shape == (depth, 3, height, width)
        assert 0 <= oof.min() and oof.max() <= 1
    assert json.loads((run / "done.json").read_text())["epochs_run"] == 1


@pytest.mark.parametrize("arch", ["segresnet3d_tiny", "unet3d_tiny", "unet3d_patch_tiny", "cascade3d_tiny"])
def test_predict_volume_returns_probabilities_at_the_original_shape(work, arch):
    task = Seg3DTask(config(work, arch=arch, sw_overlap=0.7), work / "cache")
    rng = np.random.default_rng(0)
    vol = CaseDay("case1_day1", (), rng.integers(0, 3000, (13, 37, 45), dtype=np.uint16), None)
    model = task.build_model().eval()
    with torch.no_grad():
        probs = task.predict_volume(model, vol, torch.device("cpu"))
    assert probs.dtype == np.float32 and probs.shape == (13, 3, 37, 45)
    assert 0 <= probs.min() and probs.max() <= 1 and probs.std() > 0


def test_slab_reassembly_is_exact():
    x = torch.rand(1, 2, 37, 5, 6)
    twice = slab_apply(lambda part, z0: 2 * part, x, 16)
    assert torch.equal(twice, 2 * x)
    offsets = slab_apply(lambda part, z0: part[:, :1] * 0 + z0, x, 16)  # consecutive slabs from z = 0
    assert torch.equal(offsets[0, 0, :, 0, 0], torch.arange(37.0) // 16 * 16)


def test_patch_wise_prediction_of_a_voxelwise_net_equals_the_whole_volume():
    torch.manual_seed(0)
    model = SlabNet(nn.Conv3d(1, 3, 1), divisor=1, slab=16).eval()
    x = torch.rand(1, 1, 37, 40, 50)
    with torch.no_grad():
        out = model.predict(x, (16, 32, 32), 0.5, 2)
        assert out.shape == (1, 3, 37, 40, 50)
        assert torch.allclose(out, model.net(x), atol=1e-5)


def _stage2_inputs(model: Cascade3D) -> tuple[list, torch.utils.hooks.RemovableHandle]:
    seen = []
    return seen, model.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))


def test_cascade_guidance_is_the_upsampled_stage1_output():
    torch.manual_seed(0)
    model = create_model("cascade3d_tiny", slab=16, scale=2).eval()
    x = torch.rand(1, 1, 16, 32, 32)
    seen, hook = _stage2_inputs(model)
    with torch.no_grad():
        model(x)
        expected = torch.sigmoid(F.interpolate(model.coarse_logits(x), size=(16, 32, 32), mode="trilinear"))
        assert model.coarse_logits(x).shape == (1, 3, 8, 16, 16)
        assert seen[0].shape == (1, 4, 16, 32, 32) and torch.equal(seen[0][:, :1], x)
        assert torch.allclose(seen[0][:, 1:], expected, atol=1e-5)
        for param in model.coarse.parameters():  # change stage 1 only
            param.add_(0.5 * torch.randn_like(param))
        model(x)
    hook.remove()
    assert torch.equal(seen[1][:, :1], x) and (seen[1][:, 1:] - seen[0][:, 1:]).abs().max() > 0.05


def test_cascade_inference_guides_every_slab_from_the_whole_volume():
    torch.manual_seed(0)
    model = create_model("cascade3d_tiny", slab=16, scale=4).eval()
    x = torch.rand(1, 1, 20, 32, 32)
    seen, hook = _stage2_inputs(model)
    with torch.no_grad():
        out = model.predict(x, (16, 32, 32), 0.0, 1)  # one window per slab
        whole = torch.sigmoid(F.interpolate(model.coarse_logits(x), size=(20, 32, 32), mode="trilinear"))
    hook.remove()
    assert out.shape == (1, 3, 20, 32, 32) and len(seen) == 2
    guidance = torch.cat([s[:, 1:] for s in seen], dim=2)[:, :, :20]
    assert torch.allclose(guidance, whole, atol=1e-5)


def test_cascade_loss_trains_both_stages(work):
    cfg = config(work, arch="cascade3d_tiny", augment3d="none")
    task = Seg3DTask(cfg, work / "cache")
    dataset = task.train_dataset(VolumeCache(work / "cache").case_days()[:2])
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 1, cfg.slab, 32, 32)
    model = task.build_model()
    task.loss(model, batch, torch.device("cpu")).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (*model.coarse.parameters(), *model.net.parameters()))


def test_crops_pad_small_volumes_and_find_labels(work):
    cache = VolumeCache(work / "cache")
    short = next(cd for cd in cache.case_days() if cache.load(cd).shape[0] < 16)
    vol = cache.load(short)
    depth, height, width = vol.shape
    roi = (16, height + 6, width + 10)
    sample = CropDataset(work / "cache", [short], roi, samples_per_volume=1)[0]
    assert sample["image"].shape == (1, *roi) and sample["mask"].shape == (3, *roi)
    image = normalise(np.asarray(vol.image), intensity_window(vol.image))
    assert np.allclose(sample["image"][0, :depth, :height, :width].numpy(), image)
    assert np.array_equal(sample["mask"][:, :depth, :height, :width].numpy(), np.asarray(vol.mask).transpose(1, 0, 2, 3))
    assert sample["image"][:, depth:].abs().sum() == 0 and sample["mask"][:, :, height:].abs().sum() == 0
    positive = CropDataset(work / "cache", cache.case_days(), (8, 16, 16), samples_per_volume=2, pos_ratio=1.0)
    assert all(positive[i]["mask"].sum() > 0 for i in range(len(positive)))


def test_augmentation_is_deterministic_per_seed_and_epoch(work):
    case_days = VolumeCache(work / "cache").case_days()[:2]

    def dataset(seed=0):
        return CropDataset(work / "cache", case_days, (16, 32, 32), 4, augment=build_augment3d("default"), seed=seed)

    a, b, plain = dataset(), dataset(), CropDataset(work / "cache", case_days, (16, 32, 32), 4)
    first = [a[i] for i in range(len(a))]
    assert all(torch.equal(s["image"], b[i]["image"]) and torch.equal(s["mask"], b[i]["mask"]) for i, s in enumerate(first))
    assert any(not torch.equal(s["image"], plain[i]["image"]) for i, s in enumerate(first))
    loader = torch.utils.data.DataLoader(b, batch_size=2, num_workers=1)
    assert torch.equal(next(iter(loader))["image"], torch.stack([first[0]["image"], first[1]["image"]]))
    a.set_epoch(1)
    assert any(not torch.equal(s["image"], a[i]["image"]) for i, s in enumerate(first))
    assert any(not torch.equal(s["image"], dataset(seed=1)[i]["image"]) for i, s in enumerate(first))


def test_archs_are_listed():
    table = list_archs_table("seg3d")
    rows = {line.split()[0]: line.split()[1] for line in table.splitlines()[1:]}
    wanted = {"segresnet3d", "segresnet3d_tiny", "unet3d", "unet3d_tiny", "unet3d_patch", "cascade3d"}
    assert wanted <= set(rows) and set(rows.values()) == {"seg3d"}


def test_bad_options_are_one_line_errors(work):
    with pytest.raises(DataError, match="roi '32,32'"):
        Seg3DTask(config(work, roi="32,32"), work / "cache")
    with pytest.raises(DataError, match="multiples of 4"):
        Seg3DTask(config(work, roi="30,32,16"), work / "cache")
    with pytest.raises(DataError, match="--sw-overlap 1.0"):
        Seg3DTask(config(work, sw_overlap=1.0), work / "cache")

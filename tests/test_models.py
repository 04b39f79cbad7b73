"""Architecture registry, local encoder weights, losses."""
import pytest
import timm
import torch
from safetensors.torch import save_file

from src.core.errors import DataError
from src.engine.losses import CombinedLoss, parse_loss_spec
from src.models.registry import create_model, get_arch, list_archs
from src.models.weights import load_encoder_weights


def test_registry_has_the_kaggle_names():
    names = {a.name for a in list_archs(stage="seg2d")}
    for expected in ["unet_r18", "unet_r34", "unetpp_effb4", "unet_effb7", "fpn_effv2s", "upernet_convnext_s",
                     "upernet_convnext_b", "unet_mitb1", "unet_tiny"]:
        assert expected in names
    assert [a.name for a in list_archs("unetpp_eff*")] == sorted(a.name for a in list_archs("unetpp_eff*"))
    assert all(a.name.startswith("upernet_") for a in list_archs("upernet_*"))


def test_unknown_arch_lists_valid_names():
    with pytest.raises(KeyError, match="unet_r18"):
        get_arch("unet_r19")


def test_tiny_model_forward_with_5_channels_and_presence_head():
    model = create_model("unet_tiny", in_channels=5, classes=3, aux_head=True).eval()
    masks, presence = model(torch.zeros(2, 5, 64, 64))
    assert masks.shape == (2, 3, 64, 64) and presence.shape == (2, 3)


def test_local_timm_weights_adapt_first_conv_to_5_channels(tmp_path):
    source = timm.create_model("mobilenetv3_small_050", pretrained=False)
    path = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_model("unet_tiny", in_channels=5)
    assert load_encoder_weights(model, path) > 100
    stem3, stem5 = source.conv_stem.weight, model.encoder.model.conv_stem.weight
    assert stem5.shape[1] == 5
    assert torch.allclose(stem5[:, :3] * 5 / 3, stem3)  # timm's adapt_input_conv: repeat and rescale
    deep = dict(source.named_parameters())["blocks.2.0.conv_pw.weight"]
    assert torch.equal(dict(model.encoder.model.named_parameters())["blocks.2.0.conv_pw.weight"], deep)


def test_local_smp_encoder_weights_pth(tmp_path):
    donor = create_model("unet_r18", in_channels=3)
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in donor.encoder.state_dict().items()}}, tmp_path / "r18.pth")
    model = create_model("unet_r18", in_channels=5)
    assert load_encoder_weights(model, tmp_path / "r18.pth") == len(donor.encoder.state_dict())
    assert torch.equal(model.encoder.layer4[0].conv1.weight, donor.encoder.layer4[0].conv1.weight)


def test_bad_weight_files_are_one_line_errors(tmp_path):
    model = create_model("unet_tiny", in_channels=3)
    with pytest.raises(DataError, match="not found"):
        load_encoder_weights(model, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pth: cannot read weights"):
        load_encoder_weights(model, tmp_path / "junk.pth")
    torch.save({"other.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="no tensor matches"):
        load_encoder_weights(model, tmp_path / "other.pth")


def test_loss_spec_parsing_and_weighting():
    assert parse_loss_spec("bce:0.5,dice:0.5") == [("bce", 0.5), ("dice", 0.5)]
    assert parse_loss_spec("lovasz") == [("lovasz", 1.0)]
    with pytest.raises(ValueError, match="unknown loss 'iou'"):
        parse_loss_spec("bce:1,iou:1")
    logits = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    target = (torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    bce, dice = CombinedLoss("bce:1")(logits, target), CombinedLoss("dice:1")(logits, target)
    assert torch.allclose(CombinedLoss("bce:0.25,dice:2")(logits, target), 0.25 * bce + 2 * dice)
    for name in ["tversky", "focal", "lovasz"]:
        assert torch.isfinite(CombinedLoss(name)(logits, target))
    perfect = target * 20 - 10
    assert CombinedLoss("bce:1,dice:1")(perfect, target) < 0.01 < CombinedLoss("bce:1,dice:1")(-perfect, target)

"""The classic UNet family: every registered name builds and runs, and the knobs do what they say."""
import pytest
import torch
import torch.nn as nn

from src.models.registry import count_parameters, create_model, get_arch, list_archs
from src.models.unet_classic import CONVS, NORMS, UNetClassic

torch.set_num_threads(1)
CLASSIC = [a.name for a in list_archs("unet_classic*")]


def test_the_family_is_registered_under_names_that_say_what_they_are():
    names = set(CLASSIC)
    assert {"unet_classic", "unet_classic_dilated2", "unet_classic_dilated4", "unet_classic_dilated8",
            "unet_classic_dilated16", "unet_classic_pyramid", "unet_classic_separable", "unet_classic_depthwise",
            "unet_classic_tiny", "unet_classic_tiny_instance", "unet_classic_tiny_noinit"} <= names
    assert all(get_arch(n).stage == "seg2d" for n in names)


@pytest.mark.parametrize("name", CLASSIC)
def test_every_name_builds_tiny_and_maps_5_channels_to_3_classes(name):
    model = create_model(name, in_channels=5, classes=3, width=4, depth=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 5, 64, 64))
    assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()


def test_original_size_is_64_to_1024_and_about_31m_parameters():
    with torch.device("meta"):
        model = create_model("unet_classic", in_channels=3, classes=3)
    assert model.bottleneck.conv2.out_channels == 1024 and model.encoders[0].conv1.out_channels == 64
    assert 30e6 < count_parameters(model) < 33e6  # the paper's net (with BatchNorm affines)


def test_presence_head_and_odd_input_sizes():
    model = create_model("unet_classic_tiny", in_channels=5, aux_head=True).eval()
    with torch.no_grad():
        logits, presence = model(torch.randn(2, 5, 50, 70))
    assert logits.shape == (2, 3, 50, 70) and presence.shape == (2, 3)


@pytest.mark.parametrize("conv", CONVS)
def test_conv_kinds_build_the_layers_they_name(conv):
    model = UNetClassic(in_channels=3, depth=3, width=8, conv=conv)
    convs = [m for m in model.encoders[0].modules() if isinstance(m, nn.Conv2d)]
    dilations = {m.dilation[0] for m in convs}
    kernels = {m.kernel_size for m in convs}
    if conv.startswith("dilated"):
        assert dilations == {int(conv[7:])}
    elif conv == "pyramid":
        assert dilations == {1, 2, 4, 8}
    elif conv == "separable":
        assert kernels == {(3, 1), (1, 3)}
    elif conv == "depthwise":
        assert any(m.groups == m.in_channels > 1 for m in convs) and (1, 1) in kernels
    else:
        assert kernels == {(3, 3)} and dilations == {1}


@pytest.mark.parametrize("norm", NORMS)
def test_norm_kinds(norm):
    block = UNetClassic(in_channels=3, depth=3, width=8, norm=norm).encoders[0]
    kinds = [type(m).__name__ for m in (block.norm1, block.norm2)]
    expected = {"none": ["Identity", "Identity"], "batch": ["BatchNorm2d", "Identity"],
                "instance": ["InstanceNorm2d", "Identity"], "double_batch": ["BatchNorm2d"] * 2,
                "double_instance": ["InstanceNorm2d"] * 2}[norm]
    assert kinds == expected


def test_init_off_keeps_torch_default_and_bad_knobs_are_value_errors():
    torch.manual_seed(0)
    on = UNetClassic(depth=3, width=8, init=True).head.bias
    torch.manual_seed(0)
    off = UNetClassic(depth=3, width=8, init=False).head.bias
    assert torch.count_nonzero(on) == 0 and torch.count_nonzero(off) > 0
    with pytest.raises(ValueError, match="unknown norm"):
        UNetClassic(norm="group")
    with pytest.raises(ValueError, match="unknown conv"):
        UNetClassic(conv="dilated3")


def test_tiny_ablation_names_change_one_knob():
    assert create_model("unet_classic_tiny_noinit").config["init"] is False
    assert create_model("unet_classic_tiny_nonorm").config["norm"] == "none"
    assert create_model("unet_classic_tiny").config == dict(depth=4, width=8, norm="double_batch", init=True,
                                                            conv="standard", dropout=0.0)

"""3D segmenters on MONAI nets, each with its whole-volume inference procedure.

Tensors are torch's (N, C, D, H, W): D is the slice axis of a case-day. Every model returns
multilabel logits for 3 classes and has `predict(volume, roi, overlap, sw_batch_size)` returning
logits for a whole (1, 1, D, H, W) volume of any size, and `crop_depth(roi_depth)`, the depth of
its training crops. Three designs:

- whole 3D (`segresnet3d`, `unet3d`): trained on roi crops, predicted by a Gaussian-weighted
  sliding window (monai.inferers.sliding_window_inference) over the volume.
- patch-wise (`unet3d_patch`): the volume is cut into slabs of `slab` slices (the last one
  zero-padded), each slab is segmented alone by a 3D UNet (sliding window in-plane only) and the
  outputs are stacked back without the padding. Trained on crops `slab` slices deep, so neither
  training nor inference ever holds activations deeper than a slab.
- cascade (`cascade3d`): stage 1, a small UNet, segments the volume downsampled by `scale` in every
  axis; its logits, upsampled trilinearly to full resolution, give 3 sigmoid guidance channels that
  are concatenated to the image (1 + 3 input channels) for stage 2, a patch-wise UNet. Both stages
  are trained jointly on slab-deep crops: forward returns (stage-2 logits, upsampled stage-1
  logits), each supervised by the same loss against the crop's mask; the guidance is detached, so
  stage 1 learns only from its own loss. At inference stage 1 sees the whole downsampled volume
  (fully convolutional, same voxel spacing as in training, more context) and stage 2 runs slab by
  slab; the guidance is upsampled along z once, then in-plane per slab (trilinear interpolation is
  separable, so this equals upsampling the whole volume at once, without holding it).

`_tiny` variants (a few thousand parameters) are for tests and CPU demos.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.networks.nets import SegResNet, UNet

from src.data.volume3d import Roi
from src.models.registry import register_arch


def _segresnet(in_channels: int, classes: int, filters: int, blocks_down: tuple[int, ...]) -> tuple[nn.Module, int]:
    net = SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=classes, init_filters=filters,
                    num_groups=min(8, filters), norm=("GROUP", {"num_groups": min(8, filters)}),
                    blocks_down=blocks_down, blocks_up=(1,) * (len(blocks_down) - 1))
    return net, 2 ** (len(blocks_down) - 1)


def _unet(in_channels: int, classes: int, channels: tuple[int, ...], res_units: int) -> tuple[nn.Module, int]:
    strides = (2,) * (len(channels) - 1)
    net = UNet(spatial_dims=3, in_channels=in_channels, out_channels=classes, channels=channels,
               strides=strides, num_res_units=res_units)
    return net, 2 ** len(strides)


def slab_apply(fn: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, slab: int) -> torch.Tensor:
    """fn(part, z0) on consecutive `slab`-slice parts of x (N, C, D, H, W), the last zero-padded at
    the end; the outputs (N, C', slab, H, W) are stacked along D and the padding dropped."""
    depth = x.shape[2]
    padded = F.pad(x, (0, 0, 0, 0, 0, -depth % slab))
    return torch.cat([fn(padded[:, :, z0:z0 + slab], z0) for z0 in range(0, depth, slab)], dim=2)[:, :, :depth]


def upsample_depth(x: torch.Tensor, depth: int) -> torch.Tensor:
    """Trilinear resize of (N, C, d, h, w) to depth slices, in-plane size unchanged."""
    return F.interpolate(x, size=(depth, *x.shape[3:]), mode="trilinear", align_corners=False)


def upsample_plane(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Trilinear resize of (N, C, d, h, w) to height x width, depth unchanged (an identity along z)."""
    return F.interpolate(x, size=(x.shape[2], height, width), mode="trilinear", align_corners=False)


class Seg3DNet(nn.Module):
    """A whole-3D net: trained on roi crops, predicted with an overlapping Gaussian sliding window."""

    def __init__(self, net: nn.Module, divisor: int):
        super().__init__()
        self.net = net
        self.divisor = divisor  # every crop and window side must be a multiple of it

    def crop_depth(self, roi_depth: int) -> int:
        return roi_depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def window(self, x: torch.Tensor, roi: Roi, overlap: float, sw_batch_size: int) -> torch.Tensor:
        """The net over x by an overlapping Gaussian-weighted sliding window of roi (D, H, W)."""
        return sliding_window_inference(x, roi, sw_batch_size, self.net, overlap=overlap, mode="gaussian")

    def predict(self, x: torch.Tensor, roi: Roi, overlap: float, sw_batch_size: int) -> torch.Tensor:
        return self.window(x, roi, overlap, sw_batch_size)


class SlabNet(Seg3DNet):
    """Patch-wise: a 3D net trained on and applied to slabs of `slab` slices."""

    def __init__(self, net: nn.Module, divisor: int, slab: int):
        super().__init__(net, divisor)
        self.slab = slab

    def crop_depth(self, roi_depth: int) -> int:
        return self.slab

    def predict(self, x: torch.Tensor, roi: Roi, overlap: float, sw_batch_size: int) -> torch.Tensor:
        window = (self.slab, *roi[1:])
        return slab_apply(lambda part, z0: self.window(part, window, overlap, sw_batch_size), x, self.slab)


class Cascade3D(SlabNet):
    """Stage 1 on the volume downsampled by `scale`; stage 2 patch-wise on image + stage-1 guidance."""

    def __init__(self, coarse: nn.Module, coarse_divisor: int, fine: nn.Module, divisor: int, slab: int, scale: int):
        super().__init__(fine, divisor, slab)
        self.coarse, self.coarse_divisor, self.scale = coarse, coarse_divisor, scale

    def coarse_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Stage 1 on x area-downsampled by about `scale`, to sides that are multiples of its divisor."""
        k = self.coarse_divisor
        size = [max(k, k * round(n / (self.scale * k))) for n in x.shape[2:]]
        return self.coarse(F.interpolate(x, size=size, mode="area"))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coarse = upsample_plane(upsample_depth(self.coarse_logits(x), x.shape[2]), *x.shape[3:])
        guidance = torch.sigmoid(coarse).detach()
        return self.net(torch.cat([x, guidance], dim=1)), coarse

    def predict(self, x: torch.Tensor, roi: Roi, overlap: float, sw_batch_size: int) -> torch.Tensor:
        height, width = x.shape[3:]
        coarse = upsample_depth(self.coarse_logits(x), x.shape[2])
        coarse = F.pad(coarse, (0, 0, 0, 0, 0, -x.shape[2] % self.slab))
        window = (self.slab, *roi[1:])

        def fine(part: torch.Tensor, z0: int) -> torch.Tensor:
            guidance = torch.sigmoid(upsample_plane(coarse[:, :, z0:z0 + self.slab], height, width))
            return self.window(torch.cat([part, guidance], dim=1), window, overlap, sw_batch_size)

        return slab_apply(fine, x, self.slab)


def _register(name: str, description: str, make: Callable[[int, int, int, int], Seg3DNet]) -> None:
    @register_arch(name, "seg3d", description)
    def build(in_channels: int = 1, classes: int = 3, slab: int = 16, scale: int = 4) -> Seg3DNet:
        """`slab` and `scale` configure the patch-wise and cascade designs; whole-3D nets have neither."""
        return make(in_channels, classes, slab, scale)


_register("segresnet3d", "monai SegResNet, 16 filters, whole 3D",
          lambda i, c, slab, scale: Seg3DNet(*_segresnet(i, c, 16, (1, 2, 2, 4))))
_register("segresnet3d_tiny", "monai SegResNet, 4 filters, 3 levels (tests)",
          lambda i, c, slab, scale: Seg3DNet(*_segresnet(i, c, 4, (1, 1, 1))))
_register("unet3d", "monai UNet 16-256, whole 3D",
          lambda i, c, slab, scale: Seg3DNet(*_unet(i, c, (16, 32, 64, 128, 256), 2)))
_register("unet3d_tiny", "monai UNet 4-16 (tests)",
          lambda i, c, slab, scale: Seg3DNet(*_unet(i, c, (4, 8, 16), 1)))
_register("unet3d_patch", "monai UNet 16-256 on slabs of `slab` slices",
          lambda i, c, slab, scale: SlabNet(*_unet(i, c, (16, 32, 64, 128, 256), 2), slab))
_register("unet3d_patch_tiny", "monai UNet 4-16 on slabs (tests)",
          lambda i, c, slab, scale: SlabNet(*_unet(i, c, (4, 8, 16), 1), slab))
_register("cascade3d", "UNet 16-64 at 1/scale, then UNet 16-256 on slabs of image + guidance",
          lambda i, c, slab, scale: Cascade3D(*_unet(i, c, (16, 32, 64), 2), *_unet(i + c, c, (16, 32, 64, 128, 256), 2),
                                              slab, scale))
_register("cascade3d_tiny", "UNet 4-16 at 1/scale, then UNet 4-16 on slabs (tests)",
          lambda i, c, slab, scale: Cascade3D(*_unet(i, c, (4, 8, 16), 1), *_unet(i + c, c, (4, 8, 16), 1), slab, scale))

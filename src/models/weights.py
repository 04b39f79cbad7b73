"""Local pretrained weights, never a download: load a timm or smp encoder state dict from a file.

A first conv stored for 3 input channels is adapted to the model's 3 or 5 channels with timm's
`adapt_input_conv` (repeat and rescale), not reset.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn as nn
from timm.models import adapt_input_conv

from src.core.errors import DataError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a .safetensors or .pth/.pt file (a bare state dict or one under 'state_dict'/'model')."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: encoder weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(f"{path}: cannot read weights (not a file of tensors and plain containers only: "
                        "refused, nothing was run)") from None
    except Exception as exc:  # a corrupt file can raise many types; report it as bad input
        raise DataError(f"{path}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a state dict")
    bad = next(((k, v) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise DataError(f"{path}: not a state dict of tensors (entry {str(bad[0])[:60]!r} holds a "
                        f"{type(bad[1]).__name__})")
    return obj


def _candidate_targets(encoder: nn.Module) -> list[dict[str, torch.Tensor]]:
    """State dicts the file may match: smp's own encoder, or the timm model inside a `tu-` encoder."""
    targets = [encoder.state_dict()]
    inner = getattr(encoder, "model", None)
    if isinstance(inner, nn.Module):
        targets.append(inner.state_dict())
    return targets


def load_encoder_weights(model: nn.Module, path: str | Path) -> int:
    """Load encoder weights from `path` into `model.encoder`; return the number of tensors loaded.

    Keys may carry a leading `encoder.` (a whole smp model's file). Tensors whose shapes differ
    only in the input-channel dimension of a conv are adapted; a file matching no key is an error.
    """
    source = {k.removeprefix("encoder."): v for k, v in read_state_dict(path).items()}
    encoder = model.encoder
    best_target, best_hits, prefix = None, 0, ""
    for i, target in enumerate(_candidate_targets(encoder)):
        hits = len(set(source) & set(target))
        if hits > best_hits:
            best_target, best_hits, prefix = target, hits, ("" if i == 0 else "model.")
    if best_target is None:
        raise DataError(f"{path}: no tensor matches the encoder of this arch")
    update = {}
    for key, value in source.items():
        if key not in best_target:
            continue
        want = best_target[key]
        if value.shape != want.shape and value.ndim == 4 and value.shape[0] == want.shape[0] \
                and value.shape[2:] == want.shape[2:]:
            value = adapt_input_conv(want.shape[1], value.float()).to(want.dtype)
        if value.shape != want.shape:
            raise DataError(f"{path}: tensor {key} has shape {tuple(value.shape)}, the encoder needs {tuple(want.shape)}")
        update[prefix + key] = value
    encoder.load_state_dict(update, strict=False)
    return len(update)

"""What Kaggle's Python image provides, and what the offline bundle must carry beside it.

Source of KAGGLE_IMAGE: Kaggle's docker-python image (the `Kaggle/docker-python` repository on
GitHub, its Dockerfile.tmpl and kaggle_requirements.txt), which the competition's notebooks run
in. Of the packages this project imports, the image ships torch, torchvision, timm, albumentations,
OpenCV, numba, pandas, scikit-learn, scipy, matplotlib and pillow (with their own dependencies),
and none of segmentation-models-pytorch, MONAI, ultralytics, edt or connected-components-3d. The
image also happens to ship some of those packages' dependencies (requests, psutil, PyYAML, polars);
the bundle carries them anyway, so the kernel does not depend on the image's choice of versions
beyond the packages named here.

The bundle's wheels are pinned in ONE place, `kernel-requirements.txt` at the repository root
(requirements.txt includes it): KERNEL_PACKAGES and every dependency of theirs that the image's
packages do not already bring, at the versions installed here. `python -m src.kernel pins` prints
that closure from the installed distributions; tests/test_kernel.py checks the file against it.
"""
from __future__ import annotations

import importlib.metadata as metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from src.core.errors import DataError

ROOT = Path(__file__).resolve().parent.parent.parent
KERNEL_REQUIREMENTS = ROOT / "kernel-requirements.txt"

# Kaggle's Python image (see the module docstring): what a kernel can import without a wheel.
KAGGLE_IMAGE = ("torch", "torchvision", "timm", "albumentations", "opencv-python", "opencv-python-headless",
                "numba", "pandas", "scikit-learn", "scipy", "matplotlib", "pillow")
# What the project imports that the image lacks; the bundle carries these and their missing dependencies.
KERNEL_PACKAGES = ("segmentation-models-pytorch", "monai", "ultralytics", "edt", "connected-components-3d")


def read_pins(path: str | Path) -> dict[str, str]:
    """name -> version of the `name==version` lines of a requirements file (names canonical;
    comments, blank lines and `-r` includes skipped)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"{path}: unreadable requirements file ({exc})") from None
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[canonicalize_name(name.strip())] = version.strip()
    return pins


def installed_closure(names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`names` and everything they require (environment markers evaluated, no extras), as installed
    in this interpreter: canonical name -> version."""
    seen: dict[str, str] = {}
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise DataError(f"{name}: not installed (pip install -r requirements.txt)") from None
        seen[name] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return dict(sorted(seen.items()))


def kernel_closure() -> dict[str, str]:
    """What the bundle must carry: KERNEL_PACKAGES and their dependencies, minus what the image's
    packages bring, at the installed versions."""
    image = installed_closure(KAGGLE_IMAGE)
    return {n: v for n, v in installed_closure(KERNEL_PACKAGES).items() if n not in image}


def image_constraints() -> dict[str, str]:
    """The image's packages and their dependencies at the installed versions (to build a stand-in image)."""
    return installed_closure(KAGGLE_IMAGE)


def kernel_pins() -> dict[str, str]:
    """The bundle's wheels as pinned in kernel-requirements.txt."""
    pins = read_pins(KERNEL_REQUIREMENTS)
    if not pins:
        raise DataError(f"{KERNEL_REQUIREMENTS}: no pinned package")
    return pins


def format_pins(pins: dict[str, str]) -> str:
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))

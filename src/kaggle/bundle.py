"""The offline Kaggle kernel bundle, built by `python -m src.kernel build`.

The bundle is a folder to upload as a Kaggle dataset:
  code/           the project's source (src/ without the benchmarks, and requirements.txt)
  runs/<name>/    every run the ensemble needs (src.ensembling.ensemble_file.Ensemble.run_paths:
                  its members, the gate and crop runs they were predicted with, its own gate and
                  crop): each fold's config, weights and done marker, nothing else
  ensemble.json   the tuned ensemble
  wheels/         wheels of the dependencies Kaggle's image lacks (pip download), installed with
                  --no-index so the kernel runs with the internet off
  inference.py    the kernel's script: installs the wheels, then runs src.submit on the test set
  kernel-metadata.json, README.txt
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from src.core.artifacts import RunDir
from src.core.atomic import atomic_dir, write_json_atomic
from src.core.errors import DataError
from src.ensembling.ensemble_file import load_ensemble

# Pinned in requirements.txt but absent from Kaggle's Python image (it ships torch, torchvision,
# timm, albumentations, opencv, numba, pandas, scikit-learn, scipy, matplotlib).
KAGGLE_MISSING = ("segmentation-models-pytorch", "monai", "ultralytics", "ultralytics-thop", "edt",
                  "connected-components-3d")
ROOT = Path(__file__).resolve().parent.parent.parent

INFERENCE_SCRIPT = '''"""Kaggle inference with the internet off: install the bundled wheels, then write submission.csv."""
import argparse
import subprocess
import sys
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, default=BUNDLE, help="the uploaded bundle folder")
    parser.add_argument("--data-dir", default="/kaggle/input/uw-madison-gi-tract-image-segmentation")
    parser.add_argument("--out", default="/kaggle/working/submission.csv")
    parser.add_argument("--allow-train-fallback", default="0", help="while test/ is empty: predict N train case-days")
    args = parser.parse_args()
    wheels = sorted((args.bundle / "wheels").glob("*.whl"))
    if wheels:
        # --ignore-installed: the bundle's pinned versions run, whatever the image already has
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet",
                               "--ignore-installed", *map(str, wheels)])
    subprocess.check_call([sys.executable, "-m", "src.submit", "--ensemble", str(args.bundle / "ensemble.json"),
                           "--runs-root", str(args.bundle / "runs"), "--data-dir", args.data_dir, "--out", args.out,
                           "--allow-train-fallback", args.allow_train_fallback], cwd=args.bundle / "code")


if __name__ == "__main__":
    main()
'''

README_TEXT = """Offline inference bundle for the UW-Madison GI Tract Image Segmentation competition.
1. Upload this folder as a private Kaggle dataset.
2. Create a script kernel whose code is inference.py (or run `python /kaggle/input/<dataset>/inference.py`),
   add the competition and the dataset as inputs, turn the internet off, pick a GPU.
3. It installs wheels/ with --no-index and writes /kaggle/working/submission.csv.
"""


def _code_ignored(folder: str, names: list[str]) -> list[str]:
    """What the bundle's code/ leaves out: caches and the benchmarks (src/bench, not run on Kaggle)."""
    skipped = [n for n in names if n == "__pycache__" or n.endswith(".pyc")]
    return skipped + (["bench"] if Path(folder) == ROOT / "src" else [])


def _pins(requirements: Path) -> dict[str, str]:
    pins = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def download_wheels(names: tuple[str, ...], dest: Path) -> list[Path]:
    """`pip download` the pinned versions of `names` (binary wheels only, no dependencies) into `dest`."""
    pins = _pins(ROOT / "requirements.txt")
    missing = [n for n in names if n not in pins]
    if missing:
        raise DataError(f"{ROOT / 'requirements.txt'}: no pinned version for {', '.join(missing)}")
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(dest),
           *[f"{n}=={pins[n]}" for n in names]]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"pip download of {', '.join(names)} failed: {last}")
    return sorted(dest.glob("*.whl"))


def _copy_run(run: Path, dest: Path) -> None:
    """Each trained fold's config, weights and done marker (no OOF, no optimizer state)."""
    for fold in RunDir(run).folds().values():
        target = dest / fold.path.name
        target.mkdir(parents=True)
        for path in fold.bundle_files():
            if path.is_file():
                shutil.copy2(path, target / path.name)


def build(ensemble_json: str | Path, out: str | Path, wheels: tuple[str, ...] = KAGGLE_MISSING,
          title: str = "GI tract segmentation inference") -> Path:
    """Write the bundle to `out` (built beside it, then renamed into place)."""
    ensemble_json, out = Path(ensemble_json), Path(out)
    ensemble = load_ensemble(ensemble_json)
    with atomic_dir(out) as staging:
        shutil.copytree(ROOT / "src", staging / "code" / "src", ignore=_code_ignored)
        shutil.copy2(ROOT / "requirements.txt", staging / "code" / "requirements.txt")
        for run in map(Path, ensemble.run_paths()):
            _copy_run(run, staging / "runs" / run.name)
        shutil.copy2(ensemble_json, staging / "ensemble.json")
        if wheels:
            download_wheels(wheels, staging / "wheels")
        (staging / "inference.py").write_text(INFERENCE_SCRIPT)
        (staging / "README.txt").write_text(README_TEXT)
        slug = out.name.lower().replace("_", "-")
        write_json_atomic(staging / "kernel-metadata.json", {
            "id": f"USERNAME/{slug}", "title": title, "code_file": "inference.py", "language": "python",
            "kernel_type": "script", "is_private": True, "enable_gpu": True, "enable_internet": False,
            "dataset_sources": [f"USERNAME/{slug}-bundle"],
            "competition_sources": ["uw-madison-gi-tract-image-segmentation"]})
    return out

"""The offline Kaggle kernel bundle, built by `python -m src.kernel build`.

The bundle is a folder to upload as a Kaggle dataset:
  code/           the project's source (src/ without the benchmarks, requirements.txt, kernel-requirements.txt)
  runs/<name>/    every run the ensemble needs (src.ensembling.ensemble_file.Ensemble.run_paths:
                  its members, the gate and crop runs they were predicted with, its own gate and
                  crop): each complete fold's FoldDir.bundle_files() (config, weights, done marker)
  ensemble.json   the tuned ensemble
  wheels/         the wheels pinned in kernel-requirements.txt (what Kaggle's image lacks, see
                  src.kaggle.image), installed with --no-index so the kernel runs with the internet off
  inference.py    the kernel's script: verifies that the bundle holds exactly the manifest's files, each with
                  its sha256 (before importing anything from it), installs the wheels, runs src.submit
  manifest.json   every run, fold and file with its sha256 and size, the package versions, the bundle size
  kernel-metadata.json, README.txt
A fold without its done marker is refused (an interrupted training), unless allow_incomplete.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.utils import canonicalize_name

from src.core.atomic import atomic_dir, write_json_atomic
from src.core.errors import DataError
from src.core.outputs import check_output
from src.core.readers import read_json_object
from src.ensembling.ensemble_file import load_ensemble
from src.inference.runs import TrainedRun
from src.kaggle.image import KAGGLE_IMAGE, KERNEL_REQUIREMENTS, ROOT, kernel_pins

# the bundle's own layout (not a training artifact)
CODE_DIR, RUNS_DIR, WHEELS_DIR = "code", "runs", "wheels"
ENSEMBLE_FILE, MANIFEST_FILE, INFERENCE_FILE = "ensemble.json", "manifest.json", "inference.py"
METADATA_FILE, README_FILE = "kernel-metadata.json", "README.txt"
# at the bundle's root, outside the manifest: the manifest itself, and the Kaggle CLI's metadata files
# (edited by the user, never uploaded); inference.py accepts them and nothing else unlisted
UNLISTED = (MANIFEST_FILE, METADATA_FILE, "dataset-metadata.json")
MANIFEST_VERSION = 1
COMPETITION = "uw-madison-gi-tract-image-segmentation"

INFERENCE_SCRIPT = '''"""Kaggle inference with the internet off: verify the bundle, install its wheels, write submission.csv."""
import sys

# Python put this script's folder (the bundle) first on sys.path: drop it before any other import, so
# that no file of the bundle is imported before the bundle is verified.
import os  # noqa: E402  (loaded with the interpreter, before sys.path[0] was set: never the bundle's)

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != HERE]

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import stat  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path, PurePosixPath  # noqa: E402

BUNDLE = Path(HERE)
MANIFEST = "manifest.json"
UNLISTED = UNLISTED_NAMES  # manifest.json and the Kaggle CLI's metadata files (never uploaded)
SHA256 = re.compile(r"[0-9a-f]{64}")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def read_manifest(bundle: Path) -> dict:
    """manifest.json, its shape checked: {"files": {relative path: {"sha256", "bytes"}}, "packages":
    [{"wheel": a listed file}], "bytes"}; a one-line error naming the file otherwise."""
    path = bundle / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        fail(f"{path}: unreadable bundle manifest ({' '.join(str(exc).split())})")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not isinstance(manifest.get("packages"), list) \\
            or type(manifest.get("bytes")) is not int:
        fail(f"{path}: malformed bundle manifest (needs files, packages and bytes)")
    for rel, entry in files.items():
        parts = PurePosixPath(rel).parts
        if rel.startswith("/") or not parts or ".." in parts or "." in parts or rel != "/".join(parts) \\
                or rel in UNLISTED or "\\\\" in rel:
            fail(f"{path}: malformed bundle manifest (file {rel[:80]!r} is not a plain path inside the bundle)")
        if not isinstance(entry, dict) or not SHA256.fullmatch(str(entry.get("sha256"))) \\
                or type(entry.get("bytes")) is not int:
            fail(f"{path}: malformed bundle manifest (file {rel[:80]!r} needs a sha256 and a size in bytes)")
    for package in manifest["packages"]:
        if not isinstance(package, dict) or package.get("wheel") not in files:
            fail(f"{path}: malformed bundle manifest (a package whose wheel is not a listed file)")
    return manifest


def verify(bundle: Path) -> dict:
    """The bundle holds exactly the files manifest.json lists (regular files, no links, no other file
    or folder but UNLISTED), each with its size and sha256; the manifest, else a one-line error."""
    manifest = read_manifest(bundle)
    files = manifest["files"]
    folders = {str(PurePosixPath(rel).parent) for rel in files} | {"."}
    folders |= {str(parent) for rel in folders for parent in PurePosixPath(rel).parents}
    found = set()
    for top, dirs, names in os.walk(bundle):
        for name in dirs + names:
            path = Path(top) / name
            rel = path.relative_to(bundle).as_posix()
            mode = os.lstat(path).st_mode
            expected = stat.S_ISDIR(mode) and rel in folders or stat.S_ISREG(mode) and (rel in files or rel in UNLISTED)
            if not expected:
                fail(f"{path}: not in manifest.json (an added or changed upload); nothing of the bundle was run")
            found.add(rel)
    for rel, entry in files.items():
        path = bundle / rel
        if rel not in found:
            fail(f"{path}: listed in manifest.json but missing from the bundle")
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != entry["sha256"] or path.stat().st_size != entry["bytes"]:
            fail(f"{path}: sha256 does not match manifest.json (corrupt or changed upload)")
    return manifest


def run(cmd: list, what: str, **kwargs) -> None:
    """Run a step; a failure exits with the step's own code (its error line already printed)."""
    code = subprocess.run(cmd, **kwargs).returncode
    if code:
        print(f"inference: {what} failed (exit code {code})", flush=True)
        sys.exit(code)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, default=BUNDLE, help="the uploaded bundle folder")
    parser.add_argument("--data-dir", default="/kaggle/input/uw-madison-gi-tract-image-segmentation")
    parser.add_argument("--out", default="/kaggle/working/submission.csv")
    parser.add_argument("--allow-train-fallback", default="0", help="while test/ is empty: predict N train case-days")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cuda or cpu")
    parser.add_argument("--max-image-pixels", help="refuse a larger slice or 2D image (passed on to src.submit; default: its own cap)")
    args = parser.parse_args()
    manifest = verify(args.bundle)
    print(f"bundle: {len(manifest['files'])} files verified ({manifest['bytes'] / 1e6:.1f} MB)", flush=True)
    wheels = [str(args.bundle / p["wheel"]) for p in manifest["packages"]]
    if wheels:
        # no index: only the bundled wheels and what the image has; pip resolves each wheel's
        # dependencies against them, so a missing one or a version clash fails here, by name
        run([sys.executable, "-m", "pip", "install", "--no-index", "--quiet",
             "--find-links", str(args.bundle / "wheels"), *wheels], "installing the bundled wheels")
    # /kaggle/input is read-only, and the bundle must stay as verified: ultralytics' settings, numba's
    # cache and Python's bytecode go elsewhere
    scratch = Path(tempfile.gettempdir())
    env = {"YOLO_CONFIG_DIR": str(scratch / "yolo_config"), **os.environ, "PYTHONDONTWRITEBYTECODE": "1",
           "NUMBA_CACHE_DIR": str(scratch / "numba_cache")}
    run([sys.executable, "-m", "src.submit", "--ensemble", str(args.bundle / "ensemble.json"),
         "--runs-root", str(args.bundle / "runs"), "--data-dir", args.data_dir, "--out", args.out,
         "--allow-train-fallback", args.allow_train_fallback, "--device", args.device,
         *(["--max-image-pixels", args.max_image_pixels] if args.max_image_pixels else [])], "src.submit",
        cwd=args.bundle / "code", env=env)


if __name__ == "__main__":
    main()
'''

README_TEXT = """Offline inference bundle for the UW-Madison GI Tract Image Segmentation competition.
1. Upload this folder as a private Kaggle dataset (kaggle datasets create -p THIS_FOLDER --dir-mode zip).
2. Create a script kernel whose code is inference.py (or run `python /kaggle/input/<dataset>/inference.py`),
   add the competition and the dataset as inputs, turn the internet off, pick a GPU.
3. It checks that the folder holds exactly the files of manifest.json, each with its sha256 (nothing
   added, nothing missing), installs wheels/ with --no-index and writes /kaggle/working/submission.csv.
"""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _code_ignored(folder: str, names: list[str]) -> list[str]:
    """What the bundle's code/ leaves out: caches and the benchmarks (src/bench, not run on Kaggle)."""
    skipped = [n for n in names if n == "__pycache__" or n.endswith(".pyc")]
    return skipped + (["bench"] if Path(folder) == ROOT / "src" else [])


def download_wheels(names: tuple[str, ...] | None, dest: Path) -> dict[str, Path]:
    """`pip download` the versions kernel-requirements.txt pins (binary wheels only, no dependencies:
    the file pins the closure) into `dest`; `names` None means every pinned package. name -> wheel."""
    pins = kernel_pins()
    names = tuple(pins) if names is None else names
    missing = [n for n in names if n not in pins]
    if missing:
        raise DataError(f"{KERNEL_REQUIREMENTS}: no pinned version for {', '.join(missing)}")
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(dest),
           *[f"{n}=={pins[n]}" for n in names]]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"pip download of {', '.join(names)} failed: {last}")
    wheels = {}
    for wheel in sorted(dest.glob("*.whl")):
        wheels[canonicalize_name(wheel.name.split("-")[0])] = wheel
    lost = [n for n in names if n not in wheels]
    if lost:
        raise DataError(f"pip download gave no wheel for {', '.join(lost)}")
    return {n: wheels[n] for n in names}


def _copy_run(run: TrainedRun, dest: Path) -> list[dict]:
    """Each trained fold's bundle files (no OOF, no optimizer state)."""
    folds = []
    for fold in run.folds.values():
        target = dest / fold.dir.path.name
        target.mkdir(parents=True)
        files = []
        for path in fold.dir.bundle_files():
            if path.is_file():
                shutil.copy2(path, target / path.name)
                files.append(path.name)
        folds.append({"fold": fold.fold, "done": fold.dir.is_done(), "stage": fold.stage,
                      "arch": fold.record.config.get("arch"), "files": files})
    return folds


def write_manifest(staging: Path, runs: dict[str, list[dict]], packages: dict[str, Path]) -> dict:
    """manifest.json: every run and fold with its files' sha256 and size, the bundled packages and
    the versions the image must provide, the bundle size (every file but the UNLISTED ones)."""
    files = {}
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        rel = path.relative_to(staging).as_posix()
        if rel not in UNLISTED:
            files[rel] = {"sha256": sha256(path), "bytes": path.stat().st_size}
    pins = kernel_pins()
    manifest = {
        "version": MANIFEST_VERSION,
        "ensemble": ENSEMBLE_FILE,
        "runs": [{"name": name, "folds": [{**fold, "files": {
            f: files[f"{RUNS_DIR}/{name}/fold{fold['fold']}/{f}"] for f in fold["files"]}} for fold in folds]}
            for name, folds in runs.items()],
        "packages": [{"name": n, "version": pins[n], "wheel": f"{WHEELS_DIR}/{w.name}",
                      **files[f"{WHEELS_DIR}/{w.name}"]} for n, w in packages.items()],
        "image": list(KAGGLE_IMAGE),
        "files": files,
        "bytes": sum(f["bytes"] for f in files.values()),
        "weights_bytes": sum(f["bytes"] for rel, f in files.items() if rel.startswith(f"{RUNS_DIR}/")),
        "wheels_bytes": sum(f["bytes"] for rel, f in files.items() if rel.startswith(f"{WHEELS_DIR}/")),
    }
    write_json_atomic(staging / MANIFEST_FILE, manifest)
    return manifest


def build(ensemble_json: str | Path, out: str | Path, wheels: tuple[str, ...] | None = None,
          title: str = "GI tract segmentation inference", allow_incomplete: bool = False) -> Path:
    """Write the bundle to `out` (built beside it, then renamed into place). `wheels`: the packages
    to bundle, default (None) every one kernel-requirements.txt pins; () for none."""
    ensemble_json, out = Path(ensemble_json), Path(out)
    unpinned = [n for n in wheels or () if n not in kernel_pins()]
    if unpinned:  # before any work
        raise DataError(f"{KERNEL_REQUIREMENTS}: no pinned version for {', '.join(unpinned)}")
    ensemble = load_ensemble(ensemble_json)
    check_output(out, "--out", (ensemble_json, *ensemble.run_paths()), markers=(MANIFEST_FILE,), what="kernel bundle")
    with atomic_dir(out) as staging:
        shutil.copytree(ROOT / "src", staging / CODE_DIR / "src", ignore=_code_ignored)
        for name in ("requirements.txt", KERNEL_REQUIREMENTS.name):
            shutil.copy2(ROOT / name, staging / CODE_DIR / name)
        runs = {}
        for run in map(Path, ensemble.run_paths()):
            if run.name in ("", ".", ".."):
                raise DataError(f"{run}: a run path must end in the run's folder name (the bundle keys runs by name)")
            if run.name in runs:
                raise DataError(f"{run}: two runs of the ensemble are named {run.name}; the bundle keys runs by name")
            runs[run.name] = _copy_run(TrainedRun.load(run, allow_incomplete), staging / RUNS_DIR / run.name)
        shutil.copy2(ensemble_json, staging / ENSEMBLE_FILE)
        packages = download_wheels(wheels, staging / WHEELS_DIR) if wheels is None or wheels else {}
        (staging / INFERENCE_FILE).write_text(INFERENCE_SCRIPT.replace("UNLISTED_NAMES", repr(sorted(UNLISTED))))
        (staging / README_FILE).write_text(README_TEXT)
        slug = out.name.lower().replace("_", "-")
        write_json_atomic(staging / METADATA_FILE, {
            "id": f"USERNAME/{slug}", "title": title, "code_file": INFERENCE_FILE, "language": "python",
            "kernel_type": "script", "is_private": True, "enable_gpu": True, "enable_internet": False,
            "dataset_sources": [f"USERNAME/{slug}-bundle"], "competition_sources": [COMPETITION]})
        write_manifest(staging, runs, packages)
    return out


def read_manifest(bundle: str | Path) -> dict:
    return read_json_object(Path(bundle) / MANIFEST_FILE, "bundle manifest")

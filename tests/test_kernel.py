"""The offline Kaggle bundle: built by its default command from a tiny trained ensemble (two segmenters,
one of them cropped by a detector, a classifier gate, the detector's crop), checked by its manifest,
then run in a stand-in for Kaggle's image (a venv without system site packages holding only the
image's packages) with the network cut (`unshare -n`); its submission equals src.submit's, byte for byte."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_predict import build_trained_runs, gated_plain_mean, one_thread  # noqa: F401  (runs built once per session)

from src.core.artifacts import RunDir
from src.core.errors import DataError
from src.ensembling.submission import SubmitOptions, submit
from src.kaggle.bundle import UNLISTED, build, read_manifest, sha256
from src.kaggle.image import (
    KAGGLE_IMAGE,
    KERNEL_PACKAGES,
    image_constraints,
    kernel_closure,
    kernel_pins,
    read_pins,
)
from src.kernel import main
from src.train import main as train_main

ROOT = Path(__file__).resolve().parent.parent
# With no `unshare -n` (not root, no user namespaces), the network is cut by proxies to a closed port.
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
              "HTTPS_PROXY": "http://127.0.0.1:9", "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull,
              "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def unshare_works() -> bool:
    try:
        return shutil.which("unshare") is not None and subprocess.run(
            ["unshare", "-n", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def offline(cmd: list[str]) -> list[str]:
    """`cmd` in a network namespace of its own (loopback only, down) when unshare allows it."""
    return ["unshare", "-n", *cmd] if unshare_works() else cmd


def train_detector(root: Path, runs: Path) -> Path:
    """A tiny YOLO crop detector (fold 0, one epoch) on the trained runs' data, as runs/det."""
    run = runs / "det"
    if not (run / "fold0").is_dir():
        os.environ.setdefault("YOLO_CONFIG_DIR", str(runs.parent / "yolo_config"))
        train_main(["--stage", "det", "--data-dir", str(root / "data"), "--cache-dir", str(root / "cache"),
                    "--folds-csv", str(root / "folds.csv"), "--out", str(runs), "--name", "det",
                    "--arch", "yolo26n", "--img-size", "64", "--batch-size", "8", "--epochs", "1", "--workers", "0",
                    "--device", "cpu", "--slice-step", "4", "--fold", "0"])
    return run


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, one_thread) -> tuple[Path, Path]:
    """(dataset, ensemble.json) whose runs live in a folder the bundle test deletes after bundling: the
    unet and fpn segmenters gated by the classifier, the unet predicted inside the detector's box and
    the ensemble's masks cropped to it."""
    root = build_trained_runs(tmp_path_factory.getbasetemp() / "trained_runs")
    work = tmp_path_factory.mktemp("kernel")
    shutil.copytree(root / "runs", work / "runs", ignore=shutil.ignore_patterns("pred_*"))
    det = train_detector(root, work / "runs")
    out = work / "ensemble.json"
    record = gated_plain_mean(root, out, [work / "runs" / "unet", work / "runs" / "fpn"], work / "runs" / "cls")
    record["params"]["thresholds"][0] = 0.05  # masks in the CSV whatever one epoch learnt
    record["crop"] = str(det)
    record["auxiliary"].append({"path": str(det), "stage": "det", "folds": ["0"], "tta": []})
    unet = next(r for r in record["runs"] if r["name"] == "unet")
    unet["predict"] = {**unet["predict"], "crop": str(det), "tta": ["hflip"]}
    out.write_text(json.dumps(record))
    return root / "data", out


@pytest.fixture(scope="module")
def kaggle_image(tmp_path_factory) -> Path:
    """The python of a fresh venv WITHOUT system site packages holding only Kaggle's image packages
    (src.kaggle.image.KAGGLE_IMAGE at requirements.txt's pins, their dependencies at this environment's
    versions), installed from the pip cache or registry while the network is still up."""
    reuse = os.environ.get("GI_KAGGLE_IMAGE_VENV")  # development only: a venv this fixture built before
    if reuse:
        python = Path(reuse) / "bin" / "python"
        subprocess.run([str(python), "-m", "pip", "uninstall", "--quiet", "-y", *kernel_pins()], capture_output=True)
        return python
    venv = tmp_path_factory.mktemp("kaggle_image") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pins = read_pins(ROOT / "requirements.txt")
    constraints = venv.parent / "image-constraints.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in image_constraints().items()))
    start = time.monotonic()
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile",
                           "-c", str(constraints), *[f"{n}=={pins[n]}" for n in KAGGLE_IMAGE]],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"kaggle image venv: {time.monotonic() - start:.0f} s")
    return venv / "bin" / "python"


def relocated(ensemble_json: Path, dest: Path) -> Path:
    """A copy of the ensemble whose runs are copies under dest/runs (for a test to delete or break)."""
    record = json.loads(ensemble_json.read_text())
    shutil.copytree(ensemble_json.parent / "runs", dest / "runs")
    moved = lambda path: str(dest / "runs" / Path(path).name)  # noqa: E731
    for run in record["runs"] + record["auxiliary"]:
        run["path"] = moved(run["path"])
    for run in record["runs"]:
        run["predict"].update({k: moved(run["predict"][k]) for k in ("gate", "crop") if run["predict"][k]})
    record["gate"], record["crop"] = moved(record["gate"]), moved(record["crop"])
    (dest / "ensemble.json").write_text(json.dumps(record))
    return dest / "ensemble.json"


def _imports(python: Path, module: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", f"import {module}; print({module}.__file__)"], capture_output=True,
                          text=True, env={**os.environ, **NO_NETWORK}, cwd=python.parent)


@pytest.mark.slow
def test_default_build_runs_offline_in_a_kaggle_image_and_matches_submit(ensemble, kaggle_image, tmp_path, capsys):
    data, ensemble_json = ensemble
    ensemble_json = relocated(ensemble_json, tmp_path / "moved")
    expected = submit(SubmitOptions(ensemble=ensemble_json, data_dir=data, out=tmp_path / "expected.csv", device="cpu"))
    assert main(["build", "--ensemble", str(ensemble_json), "--out", str(tmp_path / "bundle")]) == 0  # the default
    assert "kernel bundle:" in capsys.readouterr().out
    bundle = tmp_path / "bundle"
    shutil.rmtree(ensemble_json.parent / "runs")  # the bundle must carry its own weights
    assert sorted(p.name for p in (bundle / "runs").iterdir()) == ["cls", "det", "fpn", "unet"]
    assert not list(bundle.rglob("last.pt")) and not list(bundle.rglob("oof")) and not list(bundle.rglob("yolo"))
    manifest = read_manifest(bundle)
    assert {p["name"]: p["version"] for p in manifest["packages"]} == kernel_pins()
    assert set(KERNEL_PACKAGES) <= set(kernel_pins()) and not set(KAGGLE_IMAGE) & set(kernel_pins())

    # the stand-in image has the image's packages and none of the bundle's
    assert "include-system-site-packages = false" in (kaggle_image.parent.parent / "pyvenv.cfg").read_text()
    assert _imports(kaggle_image, "timm").returncode == 0
    assert all(_imports(kaggle_image, m).returncode for m in ("segmentation_models_pytorch", "monai", "ultralytics"))

    proc = subprocess.run(offline([str(kaggle_image), str(bundle / "inference.py"), "--data-dir", str(data), "--out",
                                   str(tmp_path / "kernel.csv"), "--device", "cpu"]),
                          capture_output=True, text=True, env={**os.environ, **NO_NETWORK}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"{len(manifest['files'])} files verified" in proc.stdout
    assert (tmp_path / "kernel.csv").read_bytes() == expected.read_bytes()
    for module in ("segmentation_models_pytorch", "monai", "ultralytics", "edt", "cc3d"):  # from the bundle's wheels
        found = _imports(kaggle_image, module)
        assert found.returncode == 0 and str(kaggle_image.parent.parent) in found.stdout, found.stderr[-1000:]


def test_manifest_lists_every_fold_and_inference_refuses_a_corrupt_weight(ensemble, tmp_path):
    data, ensemble_json = ensemble
    bundle = build(ensemble_json, tmp_path / "bundle", wheels=())
    manifest = read_manifest(bundle)
    runs = {r["name"]: r for r in manifest["runs"]}
    assert sorted(runs) == ["cls", "det", "fpn", "unet"]
    assert [f["fold"] for f in runs["unet"]["folds"]] == ["0", "1"] and [f["fold"] for f in runs["det"]["folds"]] == ["0"]
    for name, run in runs.items():
        for fold in run["folds"]:
            source = RunDir(ensemble_json.parent / "runs" / name).fold(fold["fold"])
            assert fold["done"] and sorted(fold["files"]) == sorted(p.name for p in source.bundle_files())
            assert fold["files"][source.weights.name]["sha256"] == sha256(source.weights)
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert set(UNLISTED) - on_disk == {"dataset-metadata.json"}  # the Kaggle CLI's metadata, written by `init`
    assert set(manifest["files"]) == on_disk - set(UNLISTED) and manifest["packages"] == []
    assert manifest["bytes"] == sum(f["bytes"] for f in manifest["files"].values()) > manifest["weights_bytes"] > 0

    weights = bundle / "runs" / "fpn" / "fold1" / RunDir(bundle / "runs" / "fpn").fold(1).weights.name
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    proc = subprocess.run([sys.executable, str(bundle / "inference.py"), "--data-dir", str(data), "--out",
                           str(tmp_path / "kernel.csv")], capture_output=True, text=True,
                          env={**os.environ, **NO_NETWORK}, cwd=tmp_path)
    assert proc.returncode == 2 and not (tmp_path / "kernel.csv").exists()
    assert proc.stderr.strip().splitlines() == [f"error: {weights}: sha256 does not match manifest.json "
                                                "(corrupt or changed upload)"]


def test_inference_passes_the_pixel_cap_on_to_submit(ensemble, tmp_path):
    data, ensemble_json = ensemble
    bundle = build(ensemble_json, tmp_path / "bundle", wheels=())
    proc = subprocess.run([sys.executable, str(bundle / "inference.py"), "--data-dir", str(data), "--out",
                           str(tmp_path / "kernel.csv"), "--max-image-pixels", "16"], capture_output=True, text=True,
                          env={**os.environ, **NO_NETWORK}, cwd=tmp_path)
    assert proc.returncode == 2 and not (tmp_path / "kernel.csv").exists()
    assert "pixels is over the cap of 16" in proc.stderr


def test_an_incomplete_fold_is_refused_unless_allowed(ensemble, tmp_path, capsys):
    relocated(ensemble[1], tmp_path)
    fold = RunDir(tmp_path / "runs" / "fpn").fold(1)
    fold.done_path.unlink()
    with pytest.raises(DataError, match=f"{fold.path}: incomplete fold"):
        main(["build", "--ensemble", str(tmp_path / "ensemble.json"), "--out", str(tmp_path / "b"), "--wheels", ""])
    assert not (tmp_path / "b").exists()
    build(tmp_path / "ensemble.json", tmp_path / "b", wheels=(), allow_incomplete=True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(fold.path) in warnings[0]
    assert [f["done"] for f in next(r for r in read_manifest(tmp_path / "b")["runs"] if r["name"] == "fpn")["folds"]] \
        == [True, False]


def test_kernel_requirements_pin_the_closure_of_what_the_image_lacks():
    """kernel-requirements.txt = KERNEL_PACKAGES and their dependencies the image's packages do not
    bring, at the installed versions (regenerate with python -m src.kernel pins)."""
    assert kernel_pins() == kernel_closure()
    assert "-r kernel-requirements.txt" in (ROOT / "requirements.txt").read_text()
    assert not set(read_pins(ROOT / "requirements.txt")) & set(kernel_pins())  # pinned in one place


def test_bad_ensemble_is_a_one_line_error(tmp_path):
    (tmp_path / "ensemble.json").write_text("{not json")
    with pytest.raises(DataError, match="ensemble.json: unreadable ensemble file"):
        main(["build", "--ensemble", str(tmp_path / "ensemble.json"), "--out", str(tmp_path / "b"), "--wheels", ""])
    (tmp_path / "ensemble.json").write_text(json.dumps({"runs": [{"path": str(tmp_path / "nowhere")}]}))
    with pytest.raises(DataError, match="missing key"):
        main(["build", "--ensemble", str(tmp_path / "ensemble.json"), "--out", str(tmp_path / "b"), "--wheels", ""])
    member = {"name": "x", "path": str(tmp_path / "nowhere"), "stage": "seg2d", "group": "2d", "folds": [],
              "predict": {}}
    record = {"version": 1, "runs": [member], "params": {"weights": {"x": [1, 1, 1]}, "groups": {"x": "2d"}}}
    (tmp_path / "ensemble.json").write_text(json.dumps(record))
    with pytest.raises(DataError, match="ensemble file version 1, this code reads 2: rebuild it with python -m src.ensemble tune"):
        main(["build", "--ensemble", str(tmp_path / "ensemble.json"), "--out", str(tmp_path / "b"), "--wheels", ""])
    (tmp_path / "ensemble.json").write_text(json.dumps({**record, "version": 2}))
    with pytest.raises(DataError, match="nowhere: run folder not found"):
        main(["build", "--ensemble", str(tmp_path / "ensemble.json"), "--out", str(tmp_path / "b"), "--wheels", ""])
    with pytest.raises(DataError, match="no pinned version for nosuchpackage"):
        main(["build", "--ensemble", str(tmp_path / "ensemble.json"), "--out", str(tmp_path / "b"),
              "--wheels", "nosuchpackage"])
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))


def test_kernel_bench_times_every_run_and_projects_the_hidden_test(ensemble, tmp_path, capsys):
    from src.bench.kernel import main as bench_main

    recipe = tmp_path / "tiny.toml"
    recipe.write_text('name = "tiny"\n[data]\ndir = "data"\n[folds]\nn_folds = 2\n'
                      '[[models]]\nname = "seg"\nstage = "seg2d"\narch = "unet_tiny"\nfolds = [0, 1]\nimg_size = 32\n'
                      '[[models]]\nname = "gate"\nstage = "cls"\narch = "cls_tiny"\nfolds = [0]\nimg_size = 32\n'
                      '[ensemble]\ngate = "gate"\n')
    small = ["--slices", "2", "--height", "32", "--width", "32", "--case-day-slices", "4"]
    assert bench_main(["--fabricate", str(recipe), "--out", str(tmp_path / "fab"), *small]) == 0
    out = capsys.readouterr().out
    assert "fabricated seg (unet_tiny): 2 folds" in out and "gate " in out.split("run ")[1]
    assert "projected on a T4 (ASSUMPTION" in out and "limit 9 h" in out and "150 case-days" in out
    assert (tmp_path / "fab" / "runs" / "seg" / "fold1").is_dir()
    bundle = build(tmp_path / "fab" / "ensemble.json", tmp_path / "bundle", wheels=())  # fabricated runs are complete
    assert sorted(r["name"] for r in read_manifest(bundle)["runs"]) == ["gate", "seg"]
    _, ensemble_json = ensemble
    assert bench_main(["--ensemble", str(ensemble_json), *small]) == 0
    table = capsys.readouterr().out
    assert all(f"\n{name} " in table for name in ("unet", "fpn", "cls", "det"))

"""The offline Kaggle bundle: built from a tiny trained ensemble, installed into a fresh venv with the
network unreachable, run on the synthetic test layout; its submission equals src.submit's."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_predict import build_trained_runs, one_thread  # noqa: F401  (runs built once per session)

from src.core.errors import DataError
from src.ensembling.submission import SubmitOptions, submit
from src.ensembling.tune import TuneOptions, tune
from src.kaggle.bundle import build
from src.kernel import main

OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, one_thread) -> tuple[Path, Path]:
    """(dataset, ensemble.json) whose runs live in a folder the test deletes after bundling."""
    root = build_trained_runs(tmp_path_factory.getbasetemp() / "trained_runs")
    work = tmp_path_factory.mktemp("kernel")
    shutil.copytree(root / "runs", work / "runs")
    out = work / "ensemble.json"
    tune(TuneOptions([work / "runs" / "unet", work / "runs" / "fpn"], gate=work / "runs" / "cls", out=out,
         cache_dir=root / "cache", holdout_folds=[], passes=1), log=lambda line: None)
    record = json.loads(out.read_text())
    record["params"]["thresholds"][0] = 0.05  # masks in the CSV whatever one epoch learnt
    out.write_text(json.dumps(record))
    return root / "data", out


def test_bundle_runs_offline_in_a_fresh_venv_and_matches_submit(ensemble, tmp_path):
    data, ensemble_json = ensemble
    expected = submit(SubmitOptions(ensemble_json, data, tmp_path / "expected.csv", device="cpu"))
    try:  # a real wheel when the package registry answers; the bundle must work either way
        bundle = build(ensemble_json, tmp_path / "bundle", wheels=("edt",))
        bundled_wheel = True
    except DataError:
        bundle = build(ensemble_json, tmp_path / "bundle", wheels=())
        bundled_wheel = False
    shutil.rmtree(ensemble_json.parent / "runs")  # the bundle must carry its own weights
    assert sorted(p.name for p in (bundle / "runs").iterdir()) == ["cls", "fpn", "unet"]
    assert not list(bundle.rglob("last.pt")) and not list(bundle.rglob("oof"))
    meta = json.loads((bundle / "kernel-metadata.json").read_text())
    assert meta["enable_internet"] is False and meta["code_file"] == "inference.py"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {**os.environ, **OFFLINE}
    proc = subprocess.run([str(python), str(bundle / "inference.py"), "--data-dir", str(data), "--out",
                           str(tmp_path / "kernel.csv")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "kernel.csv").read_text() == expected.read_text()
    if bundled_wheel:  # installed from the bundle into the venv itself, not found on the system
        site = subprocess.run([str(python), "-c", "import edt; print(edt.__file__)"], capture_output=True,
                              text=True, env=env, check=True).stdout
        assert str(venv) in site


def test_bad_ensemble_is_a_one_line_error(tmp_path):
    (tmp_path / "ensemble.json").write_text("{not json")
    with pytest.raises(DataError, match="ensemble.json: unreadable ensemble file"):
        main(["build", "--ensemble", str(tmp_path / "ensemble.json"), "--out", str(tmp_path / "b"), "--wheels", ""])
    (tmp_path / "ensemble.json").write_text(json.dumps({"runs": [{"path": str(tmp_path / "nowhere")}]}))
    with pytest.raises(DataError, match="missing key"):
        main(["build", "--ensemble", str(tmp_path / "ensemble.json"), "--out", str(tmp_path / "b"), "--wheels", ""])
    (tmp_path / "ensemble.json").write_text(json.dumps({
        "version": 1, "runs": [{"name": "x", "path": str(tmp_path / "nowhere")}],
        "params": {"weights": {"x": [1, 1, 1]}, "groups": {"x": "2d"}}}))
    with pytest.raises(DataError, match="nowhere: run folder not found"):
        main(["build", "--ensemble", str(tmp_path / "ensemble.json"), "--out", str(tmp_path / "b"), "--wheels", ""])
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.building"))

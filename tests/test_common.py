"""Atomic writes and the one-line CLI error contract."""
import os
import subprocess
import sys

import numpy as np
import pytest

from src.core.atomic import atomic_path, save_npy_atomic, write_json_atomic
from src.core.errors import DataError, run_cli


def test_atomic_path_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text().strip().startswith("{") and '"a": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary left behind


def test_atomic_files_get_umask_permissions(tmp_path):
    save_npy_atomic(tmp_path / "a.npy", np.arange(3))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.npy").stat().st_mode & 0o777 == 0o666 & ~umask
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2]


def test_run_cli_turns_data_errors_into_one_line_exit_2(capsys):
    def bad(argv):
        raise DataError("x.csv row 3: malformed id 'oops'")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(bad, [])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: x.csv row 3: malformed id 'oops'\n"


@pytest.mark.parametrize("module", ["make_synthetic", "make_folds", "prepare", "train", "score", "pipeline",
                                    "predict", "ensemble", "submit", "report", "kernel", "cls_report", "benchmark", "ablate", "prune",
                                    "bench.metric", "bench.loader", "bench.seg3d", "bench.gate_crop", "bench.ensemble"])
def test_every_stage_has_help(module):
    proc = subprocess.run([sys.executable, "-m", f"src.{module}", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: " in proc.stdout

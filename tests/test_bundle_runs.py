"""The Kaggle bundle carries every run its ensemble needs, read through the one ensemble loader:
members, the gate and crop runs their predictions were made with, and the ensemble's own."""
import json

import torch

from src.core.artifacts import FoldRecord, fold_dir
from src.ensembling.ensemble_file import load_ensemble
from src.kaggle.bundle import build


def _fake_run(runs, name, stage):
    fold = fold_dir(runs, name, 0)
    fold.path.mkdir(parents=True)
    fold.write_config(FoldRecord({"stage": stage, "arch": "x"}))
    torch.save({"model": {}}, fold.weights)
    fold.write_done({"best_score": 0.5})
    (fold.path / "log.csv").write_text("epoch\n0\n")  # not bundled
    fold.oof_dir.mkdir()
    return runs / name


def test_bundle_holds_the_gate_and_crop_runs_that_members_were_predicted_with(tmp_path):
    runs = tmp_path / "runs"
    seg = _fake_run(runs, "seg", "seg2d")
    vol = _fake_run(runs, "vol", "seg3d")
    cls, det, cls2 = _fake_run(runs, "cls", "cls"), _fake_run(runs, "det", "det"), _fake_run(runs, "cls2", "cls")
    record = {"version": 2, "params": {"weights": {"seg": [1, 1, 1], "vol": [1, 1, 1]}, "groups": {"seg": "2d", "vol": "3d"}},
              "runs": [{"name": "seg", "path": str(seg), "stage": "seg2d", "group": "2d", "folds": ["0"],
                        "predict": {"tta": [], "gate": str(cls), "crop": str(det)}},
                       {"name": "vol", "path": str(vol), "stage": "seg3d", "group": "3d", "folds": ["0"],
                        "predict": {"tta": [], "gate": None, "crop": None}}],
              "auxiliary": [{"path": str(p), "stage": s, "folds": ["0"], "tta": []}
                            for p, s in ((cls, "cls"), (det, "det"), (cls2, "cls"))],
              "gate": str(cls2), "crop": None}
    (tmp_path / "ensemble.json").write_text(json.dumps(record))
    assert load_ensemble(tmp_path / "ensemble.json").run_paths() == [str(seg), str(cls), str(det), str(vol), str(cls2)]
    bundle = build(tmp_path / "ensemble.json", tmp_path / "bundle", wheels=())
    assert sorted(p.name for p in (bundle / "runs").iterdir()) == ["cls", "cls2", "det", "seg", "vol"]
    for run in ("cls", "det"):
        assert sorted(p.name for p in (bundle / "runs" / run / "fold0").iterdir()) == ["best.pt", "config.json", "done.json"]
    assert not (bundle / "code" / "src" / "bench").exists() and (bundle / "code" / "src" / "core").is_dir()

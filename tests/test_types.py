"""The pipeline's typed nouns: a trained run loaded once (TrainedRun), how a run predicts
(PredictSettings), and the typed ensemble file (members, auxiliary runs, checked parameters)."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from src import predict, submit
from src.core.artifacts import FoldRecord, RunDir, fold_dir
from src.core.errors import DataError, run_cli
from src.data.volumes import default_cache_dir
from src.ensembling.ensemble_file import AuxiliaryRun, load_ensemble
from src.inference.runs import TrainedRun
from src.inference.settings import PredictSettings


def _fake_run(runs, name, stage, folds=("0", "1"), config=None, done=True):
    for k in folds:
        fold = fold_dir(runs, name, k)
        fold.path.mkdir(parents=True)
        fold.write_config(FoldRecord({"stage": stage, "arch": "x", **(config or {})}, (), (f"case{k}_day0",)))
        torch.save({"model": {}}, fold.weights)
        if done:
            fold.write_done({"best_score": 0.5})
    return runs / name


# ---- TrainedRun -------------------------------------------------------------------------------
def test_a_run_is_loaded_once_with_its_folds_stage_and_case_day_folds(tmp_path):
    run = TrainedRun.load(_fake_run(tmp_path, "seg", "seg2d", ("0", "1", "all")))
    assert run.name == "seg" and run.stage.name == "seg2d" and list(run.folds) == ["0", "1", "all"]
    assert run.numbered_folds == ["0", "1"] and run.case_day_folds() == {"case0_day0": 0, "case1_day0": 1}
    assert [f.fold for f in run.select(None, "oof")] == ["0", "1"]
    assert [f.fold for f in run.select("all", "test")] == ["all"]
    with pytest.raises(DataError, match="fold-all model saw every case-day"):
        run.select("all", "oof")
    with pytest.raises(DataError, match=r"no trained fold 7 \(has 0, 1, all\)"):
        run.select(["7"], "test")


def test_an_incomplete_fold_is_refused_at_load_unless_allowed(tmp_path, capsys):
    path = _fake_run(tmp_path, "seg", "seg2d", done=False)
    with pytest.raises(DataError, match="seg/fold0: incomplete fold .* --allow-incomplete"):
        TrainedRun.load(path)
    assert list(TrainedRun.load(path, allow_incomplete=True).folds) == ["0", "1"]
    assert capsys.readouterr().err.count("incomplete fold used") == 2


def test_a_completed_fold_that_disappears_is_an_error_not_a_smaller_run(tmp_path, capsys):
    path = _fake_run(tmp_path, "seg", "seg2d")
    for k in ("1", "0", "1"):
        RunDir(path).record_completed(k)
    assert RunDir(path).completed_folds() == ["0", "1"] and list(TrainedRun.load(path).folds) == ["0", "1"]
    shutil.rmtree(path / "fold1")
    with pytest.raises(DataError, match=r"seg: fold 1 was completed \(completed_folds.json\) but is gone .* retrain it"):
        TrainedRun.load(path)
    with pytest.raises(SystemExit) as exit_:
        run_cli(predict.main, ["--run", str(path), "--device", "cpu", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "fold 1 was completed" in err[0]
    assert not (path / "pred_oof").exists()


def test_folds_of_two_stages_or_an_unknown_stage_are_refused(tmp_path):
    mixed = _fake_run(tmp_path, "mixed", "seg2d", ("0",))
    _fake_run(tmp_path, "other", "cls", ("1",))
    fold_dir(tmp_path, "other", 1).path.rename(mixed / "fold1")
    with pytest.raises(DataError, match="folds of different stages"):
        TrainedRun.load(mixed)
    with pytest.raises(DataError, match="valid stages are"):
        TrainedRun.load(_fake_run(tmp_path, "odd", "nosuchstage"))


def test_the_one_cache_folder_rule(tmp_path):
    own = TrainedRun.load(_fake_run(tmp_path, "own", "seg2d", config={"cache_dir": "c/own", "data_dir": "d/x"}))
    bare = TrainedRun.load(_fake_run(tmp_path, "bare", "seg2d", config={"data_dir": "d/y"}))
    assert own.cache_dir() == own.cache_dir(None, "") == Path("c/own")
    assert bare.cache_dir() == default_cache_dir("d/y")
    assert own.cache_dir(data_dir="d/z") == default_cache_dir("d/z")
    assert own.cache_dir(data_dir="d/z", cache_dir="c/given") == Path("c/given")


def test_a_gate_of_the_wrong_kind_names_the_run(tmp_path):
    seg = TrainedRun.load(_fake_run(tmp_path, "seg", "seg2d"))
    with pytest.raises(DataError, match=r"--gate .*seg: a seg2d run predicts probabilities, --gate needs presence"):
        seg.require("presence", "--gate")


# ---- PredictSettings --------------------------------------------------------------------------
def test_settings_round_trip_and_the_threshold_belongs_to_the_gate():
    settings = PredictSettings(("hflip",), "runs/det", "runs/cls", 0.3, "12:0.6")
    assert PredictSettings.from_dict(settings.to_dict(), "x") == settings
    assert settings.runs() == ["runs/cls", "runs/det"] and settings.rule == (12, 0.6)
    assert PredictSettings(gate="runs/cls").gate_threshold == 0.5
    assert PredictSettings(gate_threshold=0.3).gate_threshold is None and not PredictSettings().gates


@pytest.mark.parametrize("value, message", [
    ({"gate": "g", "gate_threshold": float("nan")}, "gate-threshold nan"),
    ({"gate": "g", "gate_threshold": -1}, "gate-threshold -1"),
    ({"gate_threshold": 2}, "gate-threshold 2"),
    ({"gate_rule": "many"}, "expected PIXELS:PROB"),
    ({"tta": "hflip"}, "expected a list of flip names"),
    ({"tta": [1]}, "expected a list of flip names"),
    ({"tta": ["spin"]}, "expected distinct names"),
    ({"sharpen": 1}, "unknown key"),
    ({"gate": 3}, "expected a non-empty text"),
    ([], "expected an object"),
])
def test_bad_settings_name_their_source(value, message):
    with pytest.raises(DataError, match=f"e.json runs\\[0\\].predict(\\.tta)?: .*{message}"):
        PredictSettings.from_dict(value, "e.json runs[0].predict")


# ---- the ensemble file ------------------------------------------------------------------------
@pytest.fixture
def record(tmp_path):
    """A version-2 ensemble record: a 2D member gated by a classifier run used by no one else."""
    runs = tmp_path / "runs"
    seg, cls = _fake_run(runs, "seg", "seg2d"), _fake_run(runs, "cls", "cls")
    return {"version": 2, "params": {"weights": {"seg": [1, 1, 1]}, "groups": {"seg": "2d"}},
            "runs": [{"name": "seg", "path": str(seg), "stage": "seg2d", "group": "2d", "folds": ["0", "1"],
                      "predict": {"tta": ["hflip"], "gate": str(cls), "gate_threshold": 0.4}}],
            "auxiliary": [{"path": str(cls), "stage": "cls", "folds": ["1"], "tta": ["vflip"]}],
            "gate": None, "crop": None}


def _write(tmp_path, record) -> str:
    (tmp_path / "e.json").write_text(json.dumps(record))
    return str(tmp_path / "e.json")


def test_a_run_used_only_as_a_members_gate_predicts_with_its_own_folds_and_tta(tmp_path, record):
    ensemble = load_ensemble(_write(tmp_path, record))
    cls = record["auxiliary"][0]["path"]
    uses = ensemble.run_uses()
    assert list(uses) == [record["runs"][0]["path"], cls]
    assert uses[cls].folds == ("1",) and uses[cls].tta == ("vflip",)
    assert ensemble.members[0].predict == PredictSettings(("hflip",), None, cls, 0.4)


def test_an_auxiliary_runs_tta_is_read_from_its_manifest_by_the_one_tta_rule(tmp_path):
    cls = TrainedRun.load(_fake_run(tmp_path, "cls", "cls"))
    out = cls.dir.predictions("oof")
    out.begin()
    out.commit({"tta": ["vflip"]})
    assert AuxiliaryRun.of(cls).tta == ("vflip",)
    out.begin()
    out.commit({"tta": "hflip"})
    with pytest.raises(DataError, match=r"cls/pred_oof/predict.json.tta: expected a list of flip names, got 'hflip'"):
        AuxiliaryRun.of(cls)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(version=1), "ensemble file version 1, this code reads 2: rebuild it with python -m src.ensemble tune"),
    (lambda r: r.update(auxiliary=[]), r"runs\[0\].predict.gate: run .* is not described under 'auxiliary'"),
    (lambda r: r["auxiliary"][0].update(stage="seg2d"), r"auxiliary\[0\].stage: a seg2d run predicts probabilities"),
    (lambda r: r["auxiliary"][0].update(tta="hflip"), r"auxiliary\[0\].tta: expected a list of flip names"),
    (lambda r: r["auxiliary"][0].update(tta=[1]), r"auxiliary\[0\].tta: expected a list of flip names"),
    (lambda r: r["auxiliary"][0].update(tta=["spin"]), r"auxiliary\[0\].tta: --tta spin: expected distinct names"),
    (lambda r: r.update(crop=r["auxiliary"][0]["path"]), "crop: .* is a cls run, expected one that predicts box"),
    (lambda r: r["runs"][0].update(predict="fast"), r"runs\[0\].predict: expected an object"),
    (lambda r: r["runs"][0].update(folds=3), r"runs\[0\].folds: expected a list of fold names"),
    (lambda r: r["runs"][0].update(group="4d"), r"runs\[0\].group: '4d'"),
    (lambda r: r["runs"][0].pop("stage"), r"runs\[0\]: missing key\(s\) stage"),
    (lambda r: r.update(runs={}), "'runs' must be a non-empty list"),
    (lambda r: r["params"].update(thresholds=[float("nan")] * 3), "thresholds: .* not finite or outside"),
    (lambda r: r["params"].update(thresholds=-1), r"thresholds: .* outside \[0.0, 1.0\]"),
    (lambda r: r["params"]["weights"].update(seg=[-1, 1, 1]), "weights of seg: .* outside"),
    (lambda r: r["params"]["weights"].update(seg=[0, 1, 1]), "no model has weight for class large_bowel"),
    (lambda r: r["params"].update(min_size=[2.5, 0, 0]), "min_size: expected whole numbers"),
    (lambda r: r["params"].update(z_largest="yes"), "z_largest: expected true or false"),
    (lambda r: r["params"].update(gate_threshold=[0, 0.4, 0]), "gate_threshold gates on a classifier but 'gate' names"),
    (lambda r: r["params"].update(crop=True), "params.crop crops to detector boxes but 'crop' names no run"),
])
def test_every_key_of_the_ensemble_file_is_checked_when_read(tmp_path, record, change, message):
    change(record)
    with pytest.raises(DataError, match=message):
        load_ensemble(_write(tmp_path, record))


def test_a_bad_ensemble_value_is_one_line_and_exit_2_before_any_prediction(tmp_path, record, capsys):
    record["params"]["thresholds"] = [float("nan")] * 3
    with pytest.raises(SystemExit) as exit_:
        run_cli(submit.main, ["--ensemble", _write(tmp_path, record), "--data-dir", str(tmp_path / "data"),
                              "--out", str(tmp_path / "sub.csv"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and "e.json" in err[0]
    assert "Traceback" not in err[0] and not (tmp_path / "sub.csv").exists()

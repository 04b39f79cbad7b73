"""The recipe runner: planning, skipping up-to-date steps, resuming an interrupted training."""
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import fit_until_killed

import src.train
from src.core.artifacts import REPORT_PAGE
from src.core.errors import DataError
from src.orchestration.recipes import load_recipe, plan
from src.pipeline import main

RECIPE = """
name = "t"
[data]
dir = "{root}/data"
synthetic = {{ cases = 3, seed = 1, sizes = "64x64", slices = "10", workers = 1 }}
[folds]
n_folds = 2
out = "{root}/folds.csv"
[[models]]
name = "m"
stage = "seg2d"
arch = "unet_tiny"
folds = [0, 1]
epochs = 2
img_size = 64
batch_size = 4
workers = 0
device = "cpu"
augment = "none"
"""


@pytest.fixture()
def recipe(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(RECIPE.format(root=tmp_path))
    return path


def test_plan_turns_options_into_flags(recipe, tmp_path):
    steps = plan(load_recipe(recipe), str(tmp_path / "runs"))
    assert [s.name for s in steps] == ["synthetic data", "folds", "cache", "train m fold 0", "train m fold 1"]
    train = steps[3].argv
    assert train[train.index("--img-size") + 1] == "64" and train[train.index("--fold") + 1] == "0"
    assert "--sizes" in steps[0].argv and steps[0].argv[steps[0].argv.index("--sizes") + 1] == "64x64"


def test_recipe_errors_are_one_line(tmp_path):
    with pytest.raises(DataError, match="recipe not found"):
        load_recipe(tmp_path / "nope")
    (tmp_path / "bad.toml").write_text("[data]\ndir = 'x'\n[folds]\n[[models]]\nname = 'a'\n")
    with pytest.raises(DataError, match=r"bad.toml: \[\[models\]\] 1 lacks the required key 'stage'"):
        load_recipe(tmp_path / "bad.toml")


def test_run_skip_and_resume(recipe, tmp_path, monkeypatch, capsys):
    runs = str(tmp_path / "runs")
    real_main = src.train.main
    calls = []

    def killed_after_one_epoch(argv):
        calls.append(list(argv))
        if "--fold" in argv and argv[argv.index("--fold") + 1] == "1" and "--resume" not in argv:
            import argparse

            from src.engine.config import (
                Seg2DConfig,
                add_config_arguments,
                config_from_args,
            )
            from src.engine.run import ensure_cache
            from src.engine.seg2d import Seg2DTask
            from src.engine.trainer import Trainer

            parser = argparse.ArgumentParser()
            add_config_arguments(parser, Seg2DConfig)
            cfg = config_from_args(Seg2DConfig, parser.parse_args(argv))
            cache, case_days = ensure_cache(cfg)
            fit_until_killed(Trainer(Seg2DTask(cfg, cache), case_days))
            raise KeyboardInterrupt  # the machine went away mid-run
        return real_main(argv)

    monkeypatch.setattr(src.train, "main", killed_after_one_epoch)
    with pytest.raises(KeyboardInterrupt):
        main([str(recipe), "--runs-dir", runs])
    assert (tmp_path / "runs" / "m" / "fold0" / "done.json").exists()
    assert not (tmp_path / "runs" / "m" / "fold1" / "done.json").exists()
    capsys.readouterr()
    main([str(recipe), "--runs-dir", runs])
    out = capsys.readouterr().out
    assert "train m fold 0: up to date, skipped" in out and "resumed" in out
    assert "--resume" in calls[-1]
    assert json.loads((tmp_path / "runs" / "m" / "fold1" / "done.json").read_text())["epochs_run"] == 2
    main([str(recipe), "--runs-dir", runs])
    rerun = capsys.readouterr().out
    assert rerun.count("up to date, skipped") == 4 and "cache: python -m src.prepare" in rerun  # the cache is checked


def test_a_model_on_two_gpus_trains_under_torchrun(tmp_path, capsys):
    """gpus = 2: the training step runs torchrun with two processes (here on the CPU, gloo), from the
    local executor too; the fold is trained by both (world size 2) and done."""
    text = RECIPE.replace("folds = [0, 1]", "folds = [0]\ngpus = 2").replace("epochs = 2", "epochs = 1")
    path = tmp_path / "t.toml"
    path.write_text(text.format(root=tmp_path))
    runs = str(tmp_path / "runs")
    train = next(s for s in plan(load_recipe(path), runs) if s.module == "src.train")
    assert train.procs == 2 and train.command([])[2:6] == ["torch.distributed.run", "--standalone",
                                                           "--nproc-per-node", "2"]
    assert main([str(path), "--runs-dir", runs]) == 0
    assert "[train m fold 0]" in capsys.readouterr().out  # a subprocess's lines, prefixed by their step
    fold = tmp_path / "runs" / "m" / "fold0"
    assert (fold / "done.json").exists() and json.loads((fold / "config.json").read_text())["world_size"] == 2
    (tmp_path / "det.toml").write_text(text.format(root=tmp_path).replace('stage = "seg2d"', 'stage = "det"')
                                       .replace('arch = "unet_tiny"', 'arch = "yolo26n"')
                                       .replace('augment = "none"\n', ""))
    with pytest.raises(DataError, match="gpus = 2: the detector trains on one GPU"):
        load_recipe(tmp_path / "det.toml")


FULL = """
name = "full"
compare = ["base"]
[data]
dir = "{root}/data"
synthetic = {{ cases = 4, seed = 2, test_cases = 1, sizes = "64x64", slices = "12", workers = 1 }}
[folds]
n_folds = 2
out = "{root}/folds.csv"
[[models]]
name = "f_unet"
stage = "seg2d"
arch = "unet_tiny"
folds = [0, 1]
{common}
img_size = 64
augment = "none"
[[models]]
name = "f_3d"
stage = "seg3d"
arch = "unet3d_tiny"
folds = [0, 1]
{common}
roi = "32,32,8"
samples_per_volume = 1
[[models]]
name = "f_cls"
stage = "cls"
arch = "cls_tiny"
folds = [0, 1]
{common}
img_size = 64
[[models]]
name = "f_det"
stage = "det"
arch = "yolo26n"
folds = [0, 1]
{common}
img_size = 64
slice_step = 3
predict_step = 3
[ensemble]
gate = "f_cls"
crop = "f_det"
passes = 1
workers = 1
[submit]
out = "{root}/sub.csv"
device = "cpu"
[report]
out = "{root}/report"
"""
BASE = """
name = "base"
[data]
dir = "{root}/data"
synthetic = {{ cases = 4, seed = 2, test_cases = 1, sizes = "64x64", slices = "12", workers = 1 }}
[folds]
n_folds = 2
out = "{root}/folds.csv"
[[models]]
name = "b_unet"
stage = "seg2d"
arch = "unet_tiny"
folds = [0, 1]
{common}
img_size = 64
augment = "none"
[ensemble]
passes = 0
holdout_folds = "none"
[submit]
out = "{root}/base.csv"
device = "cpu"
[report]
enabled = false
"""
COMMON = 'epochs = 1\nbatch_size = 4\nworkers = 0\ndevice = "cpu"'


def test_shortened_recipe_end_to_end_with_a_baseline(tmp_path, monkeypatch, capsys):
    """Every stage, the ensemble with gate and crop, the scored submission, the report, and the
    compared baseline recipe printed beside it; a second run only skips."""
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo_config"))
    for name, text in (("full", FULL), ("base", BASE)):
        (tmp_path / f"{name}.toml").write_text(text.format(root=tmp_path, common=COMMON))
    runs = str(tmp_path / "runs")
    assert main([str(tmp_path / "full.toml"), "--runs-dir", runs]) == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "runs" / "ensemble_full.json").read_text())
    # the tuner got every model, the gate and the crop; the file holds what the written parameters use
    assert sorted(record["oof"]["stages"]) == ["f_3d", "f_unet"]
    assert record["oof"]["gate"].endswith("f_cls") and record["oof"]["crop"].endswith("f_det")
    assert record["gate"] in (None, record["oof"]["gate"]) and record["crop"] in (None, record["oof"]["crop"])
    assert {a["stage"] for a in record["auxiliary"]} == {s for s, r in (("cls", "gate"), ("det", "crop")) if record[r]}
    assert sorted(r["name"] for r in record["runs"]) == sorted(record["params"]["weights"])
    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str, keep_default_na=False)
    sample = pd.read_csv(tmp_path / "data" / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert sub[["id", "class"]].equals(sample[["id", "class"]])
    for name in ("sub", "base"):
        assert 0.0 <= json.loads((tmp_path / f"{name}.score.json").read_text())["score"] <= 1.0
    assert (tmp_path / "report" / REPORT_PAGE).exists()
    table = (tmp_path / "runs" / "pipeline_full_results.txt").read_text()
    header, *lines = table.splitlines()
    assert header.split() == ["base", "full"] and any(line.startswith("test score") for line in lines)
    assert table.strip() in out
    base = json.loads((tmp_path / "runs" / "ensemble_base.json").read_text())
    assert base["scores"]["tuned_in_sample"] == base["scores"]["plain_mean"]  # passes = 0: no tuning
    main([str(tmp_path / "full.toml"), "--runs-dir", runs])
    out = capsys.readouterr().out
    steps = sum(len(plan(load_recipe(tmp_path / f"{n}.toml"), runs)) for n in ("base", "full"))
    ran = [line.split()[0] for line in out.splitlines() if " ran " in line]
    assert ran == ["cache", "cache"] and out.count("up to date, skipped") == steps - 2 == 8 + 15 - 2


@pytest.mark.parametrize("recipe_file", sorted(Path(__file__).resolve().parent.parent.glob("recipes/*.toml")),
                         ids=lambda p: p.stem)
def test_shipped_recipes_parse_into_valid_commands(recipe_file):
    """Every option of every shipped recipe is a flag of its stage, every arch is registered for it; a
    study's options are valid options of src.ablate."""
    from src.ablate import build_parser as ablate_parser
    from src.core.options import from_args
    from src.engine.config import config_from_args
    from src.engine.stages import get_stage
    from src.ensemble import parse_args as ensemble_args
    from src.models.registry import get_arch

    recipe = load_recipe(recipe_file)
    for step in plan(recipe, "runs"):
        if step.module == "src.train":
            stage = step.argv[step.argv.index("--stage") + 1]
            cfg = config_from_args(get_stage(stage).config, src.train.build_parser(stage).parse_args(step.argv))
            assert get_arch(cfg.arch).stage == stage, step.name
        elif step.module == "src.ensemble":
            ensemble_args(list(step.argv))
        elif step.module == "src.ablate":
            from src.research.ablation import AblationOptions

            assert from_args(AblationOptions, ablate_parser().parse_args(list(step.argv))).base_config.arch
    if recipe.ensemble is not None:
        assert any(step.module == "src.submit" for step in plan(recipe, "runs"))

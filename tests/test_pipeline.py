"""The recipe runner: planning, skipping up-to-date steps, resuming an interrupted training."""
import json

import pytest

import src.train
from src.common import DataError
from src.pipeline import load_recipe, main, plan

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
    with pytest.raises(DataError, match="model 1 lacks arch, stage"):
        load_recipe(tmp_path / "bad.toml")


def test_run_skip_and_resume(recipe, tmp_path, monkeypatch, capsys):
    runs = str(tmp_path / "runs")
    real_main = src.train.main
    calls = []

    def killed_after_one_epoch(argv):
        calls.append(list(argv))
        if "--fold" in argv and argv[argv.index("--fold") + 1] == "1" and "--resume" not in argv:
            from src.engine.config import Seg2DConfig, add_config_arguments, config_from_args
            from src.engine.seg_task import Seg2DTask
            from src.engine.trainer import Trainer, prepared_cache
            import argparse

            parser = argparse.ArgumentParser()
            add_config_arguments(parser, Seg2DConfig)
            cfg = config_from_args(Seg2DConfig, parser.parse_args(argv))
            cache, case_days = prepared_cache(cfg)
            Trainer(Seg2DTask(cfg, cache), case_days).fit(stop_after_epoch=1)
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
    assert capsys.readouterr().out.count("up to date, skipped") == 5

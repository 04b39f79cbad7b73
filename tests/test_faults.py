"""The catalogue of bad inputs and faults: every stage, each case run through the real CLI wrapper.

Each case asserts exit code 2, exactly one `error:` line naming the file (or flag) and the problem,
no traceback, no partial artifact, and the previous artifact untouched. The world each case runs in is
a fresh copy of tiny trained runs (tests/test_predict.py), so cases cannot disturb each other.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from test_predict import build_trained_runs

from src import (
    ensemble,
    kernel,
    make_folds,
    pipeline,
    predict,
    prepare,
    report,
    score,
    submit,
    train,
)
from src.core.artifacts import fold_dir
from src.core.errors import run_cli
from src.ensembling.tune import TuneOptions, tune
from src.inference.runs import TrainedRun

PREVIOUS = "previous artifact\n"


class Evil:
    """Unpickling this creates MARKER: a checkpoint that would run code if it were unpickled freely."""

    marker: Path = Path("/nonexistent")

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@dataclass
class World:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def marker(self) -> Path:
        return self.root / "PWNED"

    @property
    def ensemble(self) -> Path:
        return self.root / "ensemble.json"

    def fold(self, run: str = "unet", k: str = "0"):
        return fold_dir(self.runs, run, k)

    def previous(self, path: Path) -> Path:
        """An existing artifact at `path` that a failed command must leave as it was."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PREVIOUS)
        return path

    def evil(self, path: Path) -> None:
        Evil.marker = self.marker
        torch.save({"model": Evil()}, path)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = build_trained_runs(tmp_path_factory.getbasetemp() / "trained_runs")
    world = tmp_path_factory.mktemp("faults_base")
    for name in ("data", "cache", "runs"):
        shutil.copytree(root / name, world / name)
    shutil.copy2(root / "folds.csv", world / "folds.csv")
    tune(TuneOptions(runs=[world / "runs" / "unet", world / "runs" / "fpn"], out=world / "ensemble.json",
                     cache_dir=world / "cache", holdout_folds=(), passes=0), log=lambda line: None)
    return world


@pytest.fixture
def world(base, tmp_path) -> World:
    shutil.copytree(base, tmp_path / "w")
    return World(tmp_path / "w")


def _train_args(w: World, *extra: str) -> list[str]:
    return ["--data-dir", str(w.data), "--cache-dir", str(w.cache), "--folds-csv", str(w.root / "folds.csv"),
            "--out", str(w.runs), "--device", "cpu", "--workers", "0", "--img-size", "64", "--epochs", "1", *extra]


def _trained_unet_args(w: World) -> list[str]:
    """The exact flags the unet run was trained with (so --resume accepts its config)."""
    return ["--stage", "seg2d", "--data-dir", str(w.data), "--cache-dir", str(w.cache),
            "--folds-csv", str(w.root / "folds.csv"), "--out", str(w.runs), "--name", "unet", "--arch", "unet_tiny",
            "--img-size", "64", "--batch-size", "8", "--epochs", "1", "--workers", "0", "--device", "cpu",
            "--lr", "1e-2", "--augment", "none", "--fold", "0"]


def _predict_args(w: World, run: str = "unet", *extra: str) -> list[str]:
    return ["--run", str(w.runs / run), "--cache-dir", str(w.cache), "--data-dir", str(w.data), "--device", "cpu",
            "--split", "oof", *extra]


def _submit_args(w: World, out: Path | None = None, ensemble_json: Path | None = None) -> list[str]:
    return ["--ensemble", str(ensemble_json or w.ensemble), "--data-dir", str(w.data),
            "--out", str(out or w.root / "sub.csv"), "--device", "cpu"]


def _recipe(w: World, text: str) -> Path:
    path = w.root / "r.toml"
    path.write_text(text)
    return path


RECIPE = """name = "r"
[data]
dir = "{data}"
[folds]
n_folds = 2
[[models]]
name = "m"
stage = "seg2d"
arch = "unet_tiny"
folds = [0]
epochs = 1
"""


def _edit_ensemble(w: World, change: Callable[[dict], None]) -> None:
    record = json.loads(w.ensemble.read_text())
    change(record)
    w.ensemble.write_text(json.dumps(record))


def _first_cached(w: World) -> str:
    return sorted(p.name for p in (w.cache / "train").iterdir())[0]


def _ensemble_here(w: World) -> None:
    """Point the ensemble's runs at this world's copies."""
    _edit_ensemble(w, lambda r: [run.update(path=str(w.runs / run["name"])) for run in r["runs"]])


def _cache_file(w: World, name: str) -> Path:
    return w.cache / "train" / _first_cached(w) / name


@dataclass(frozen=True)
class Case:
    """One bad input: what to break, which command to run, what its one error line must say."""

    id: str
    main: Callable
    argv: Callable[[World], list[str]]
    expect: str  # a fragment of the error line (the problem)
    names: Callable[[World], str] = lambda w: ""  # a fragment naming the file or flag
    setup: Callable[[World], None] = lambda w: None
    untouched: Callable[[World], Path | None] = lambda w: None  # a previous artifact that must survive
    absent: Callable[[World], Path | None] = lambda w: None  # an output that must not appear


def _nan_weights(w: World) -> None:
    checkpoint = torch.load(w.fold().weights, weights_only=True)
    checkpoint["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                           for k, v in checkpoint["model"].items()}
    torch.save(checkpoint, w.fold().weights)


def _retarget(w: World) -> None:
    """Point the unet fold 0's saved config at this world's copies of the data, cache, folds and runs."""
    for key, value in (("data_dir", w.data), ("cache_dir", w.cache), ("folds_csv", w.root / "folds.csv"),
                       ("out", w.runs)):
        _set_config_field(w, key, str(value))


def _interrupted_retrain(w: World):
    """A re-train of the unet fold 0 interrupted after an epoch: its staging folder, not done."""
    staging = w.fold().staging
    shutil.copytree(w.fold().path, staging.path)
    staging.done_path.unlink()
    return staging


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _set_config_field(w: World, key: str, value) -> None:
    path = w.fold().config_path
    record = json.loads(path.read_text())
    record["config"][key] = value
    path.write_text(json.dumps(record))


def _nan_oof(w: World) -> None:
    path = sorted(TrainedRun.load(w.runs / "unet").prediction_files("oof").values())[0]
    array = np.load(path)
    array[0, 0, 0, 0] = np.nan
    np.save(path, array)


CASES = [
    # ---- make_folds
    Case("folds: a folder in no known layout", make_folds.main, lambda w: ["--data-dir", str(w.root / "empty"), "--out", str(w.root / "f.csv")],
         "unknown dataset layout", lambda w: "train.csv", setup=lambda w: (w.root / "empty").mkdir(),
         absent=lambda w: w.root / "f.csv"),
    Case("folds: output under a regular file", make_folds.main,
         lambda w: ["--data-dir", str(w.data), "--out", str(w.root / "folds.csv" / "f.csv")], "is a file, not a folder",
         lambda w: "folds.csv"),
    Case("folds: output is a folder", make_folds.main, lambda w: ["--data-dir", str(w.data), "--out", str(w.runs)],
         "is a folder, expected a file path", lambda w: str(w.runs)),
    Case("folds: one fold", make_folds.main, lambda w: ["--data-dir", str(w.data), "--n-folds", "1",
                                                        "--out", str(w.root / "f.csv")], "at least 2 folds",
         untouched=lambda w: w.previous(w.root / "f.csv")),
    Case("folds: more folds than cases", make_folds.main, lambda w: ["--data-dir", str(w.data), "--n-folds", "9",
                                                                     "--out", str(w.root / "f.csv")], "only 2 cases",
         untouched=lambda w: w.previous(w.root / "f.csv")),
    Case("folds: unknown excluded case-day", make_folds.main,
         lambda w: ["--data-dir", str(w.data), "--exclude", "case77_day0", "--out", str(w.root / "f.csv")],
         "excluded case-day case77_day0"),
    # ---- prepare
    Case("prepare: no data folder", prepare.main, lambda w: ["--data-dir", str(w.root / "nowhere")],
         "data folder not found", lambda w: "nowhere"),
    Case("prepare: cache under a regular file", prepare.main,
         lambda w: ["--data-dir", str(w.data), "--cache-dir", str(w.root / "folds.csv" / "cache")], "is a file, not a folder",
         lambda w: "folds.csv"),
    Case("prepare: no workers", prepare.main, lambda w: ["--data-dir", str(w.data), "--workers", "0"],
         "--workers must be at least 1"),
    # ---- train: flags
    Case("train: batch size 0", train.main, lambda w: _train_args(w, "--batch-size", "0"), "must be at least 1",
         lambda w: "--batch-size 0"),
    Case("train: lr nan", train.main, lambda w: _train_args(w, "--lr", "nan"), "must be a positive number",
         lambda w: "--lr nan"),
    Case("train: zero epochs", train.main, lambda w: _train_args(w, "--epochs", "0"), "must be at least 1",
         lambda w: "--epochs 0"),
    Case("train: negative samples per epoch", train.main, lambda w: _train_args(w, "--samples-per-epoch", "-5"),
         "must be >= 0", lambda w: "--samples-per-epoch -5"),
    Case("train: unknown schedule", train.main, lambda w: _train_args(w, "--schedule", "step"),
         "expected one of cosine, poly", lambda w: "--schedule"),
    Case("train: arch of another stage", train.main, lambda w: _train_args(w, "--arch", "segresnet3d"),
         "is a seg3d arch; the seg2d stage takes one of", lambda w: "--arch segresnet3d"),
    Case("train: unknown arch", train.main, lambda w: _train_args(w, "--arch", "unet_r19"), "unknown arch 'unet_r19'",
         lambda w: "--arch"),
    Case("train: no folds file", train.main, lambda w: [*_train_args(w), "--folds-csv", str(w.root / "none.csv")],
         "folds file not found", lambda w: "none.csv"),
    Case("train: no such fold", train.main, lambda w: _train_args(w, "--fold", "7", "--name", "x"), "has no fold 7",
         lambda w: "folds.csv", absent=lambda w: w.runs / "x"),
    Case("train: cuda without a GPU", train.main, lambda w: _train_args(w, "--device", "cuda", "--name", "x"),
         "no CUDA device", lambda w: "--device cuda", absent=lambda w: w.runs / "x"),
    Case("train: resume from a crafted last.pt", train.main, lambda w: [*_trained_unet_args(w), "--resume"],
         "not a loadable checkpoint", lambda w: "fold0.staging/last.pt",
         setup=lambda w: (_retarget(w), w.evil(_interrupted_retrain(w).last)), untouched=lambda w: w.fold().weights),
    Case("train: resume from a truncated last.pt", train.main, lambda w: [*_trained_unet_args(w), "--resume"],
         "not a loadable checkpoint", lambda w: "fold0/last.pt",
         setup=lambda w: (_retarget(w), w.fold().done_path.unlink(), _truncate(w.fold().last)),
         untouched=lambda w: w.fold().weights),
    Case("train: resume with another config", train.main,
         lambda w: [*_trained_unet_args(w), "--resume", "--lr", "0.5"], "--resume with a different config (changed: lr)",
         lambda w: "config.json", setup=_retarget),
    Case("train: crafted encoder weights", train.main,
         lambda w: _train_args(w, "--arch", "unet_tiny", "--name", "x", "--encoder-weights", str(w.root / "enc.pth")),
         "cannot read weights", lambda w: "enc.pth", setup=lambda w: w.evil(w.root / "enc.pth")),
    # ---- predict
    Case("predict: no run folder", predict.main, lambda w: _predict_args(w, "missing"), "run folder not found",
         lambda w: "missing"),
    Case("predict: zero-byte best.pt", predict.main, lambda w: _predict_args(w), "not a loadable checkpoint",
         lambda w: "best.pt", setup=lambda w: w.fold().weights.write_bytes(b"")),
    Case("predict: random-bytes best.pt", predict.main, lambda w: _predict_args(w), "not a loadable checkpoint",
         lambda w: "best.pt", setup=lambda w: w.fold().weights.write_bytes(np.random.default_rng(0).bytes(4096))),
    Case("predict: truncated best.pt", predict.main, lambda w: _predict_args(w), "not a loadable checkpoint",
         lambda w: "best.pt", setup=lambda w: _truncate(w.fold().weights)),
    Case("predict: best.pt without its model", predict.main, lambda w: _predict_args(w), "has no 'model' entry",
         lambda w: "best.pt", setup=lambda w: torch.save({"epoch": 1}, w.fold().weights)),
    Case("predict: crafted best.pt", predict.main, lambda w: _predict_args(w), "not a loadable checkpoint",
         lambda w: "best.pt", setup=lambda w: w.evil(w.fold().weights)),
    Case("predict: weights of another model", predict.main, lambda w: _predict_args(w),
         "weights do not fit the config's model", lambda w: "best.pt",
         setup=lambda w: shutil.copy2(w.fold("fpn").weights, w.fold().weights)),
    Case("predict: config.json field of a wrong type", predict.main, lambda w: _predict_args(w),
         "--epochs 'ten': expected int", lambda w: "config.json", setup=lambda w: _set_config_field(w, "epochs", "ten")),
    Case("predict: config.json unknown field", predict.main, lambda w: _predict_args(w), "unknown to Seg2DConfig",
         lambda w: "config.json", setup=lambda w: _set_config_field(w, "epoch", 3)),
    Case("predict: unreadable config.json", predict.main, lambda w: _predict_args(w), "unreadable run config",
         lambda w: "config.json", setup=lambda w: w.fold().config_path.write_text("{oops")),
    Case("predict: half-trained fold", predict.main, lambda w: _predict_args(w), "incomplete fold",
         lambda w: "fold0", setup=lambda w: w.fold().done_path.unlink()),
    Case("predict: NaN weights", predict.main, lambda w: _predict_args(w), "predicts non-finite values",
         lambda w: "best.pt", setup=lambda w: _nan_weights(w),
         untouched=lambda w: w.previous(w.runs / "unet" / "pred_oof" / "predict.json")),
    Case("predict: unknown TTA", predict.main, lambda w: _predict_args(w, "unet", "--tta", "rot90"),
         "expected distinct names from hflip, vflip", lambda w: "--tta rot90"),
    Case("predict: bad gate rule", predict.main, lambda w: _predict_args(w, "unet", "--gate-rule", "12"),
         "expected PIXELS:PROB", lambda w: "--gate-rule"),
    Case("predict: corrupt cache meta.json", predict.main, lambda w: _predict_args(w), "corrupt cache entry",
         lambda w: "meta.json", setup=lambda w: _cache_file(w, "meta.json").write_text("{")),
    Case("predict: truncated cache image", predict.main, lambda w: _predict_args(w), "unreadable cache array",
         lambda w: "image.npy", setup=lambda w: _truncate(_cache_file(w, "image.npy"))),
    Case("predict: cache mask of another dtype", predict.main, lambda w: _predict_args(w), "expected uint8",
         lambda w: "mask.npy",
         setup=lambda w: np.save(_cache_file(w, "mask.npy"), np.load(_cache_file(w, "mask.npy")).astype(np.float32))),
    # ---- ensemble
    Case("ensemble: NaN in an OOF file", ensemble.main,
         lambda w: ["tune", "--runs", str(w.runs / "unet"), "--cache-dir", str(w.cache), "--out", str(w.root / "e.json"),
                    "--passes", "0", "--holdout-folds", "none"], "holds NaN or inf probabilities", lambda w: ".npy",
         setup=_nan_oof, untouched=lambda w: w.previous(w.root / "e.json")),
    Case("ensemble: output is a folder", ensemble.main,
         lambda w: ["tune", "--runs", str(w.runs / "unet"), "--cache-dir", str(w.cache), "--out", str(w.runs)],
         "is a folder, expected a file path", lambda w: str(w.runs)),
    Case("ensemble: a classifier as a member", ensemble.main,
         lambda w: ["tune", "--runs", str(w.runs / "cls"), "--cache-dir", str(w.cache), "--out", str(w.root / "e.json")],
         "pass a classifier with --gate", lambda w: "cls", absent=lambda w: w.root / "e.json"),
    Case("ensemble: bad held-out folds", ensemble.main,
         lambda w: ["tune", "--runs", str(w.runs / "unet"), "--holdout-folds", "first", "--out", str(w.root / "e.json")],
         "expected comma-separated int values", lambda w: "--holdout-folds"),
    Case("ensemble: negative passes", ensemble.main,
         lambda w: ["tune", "--runs", str(w.runs / "unet"), "--passes", "-1", "--out", str(w.root / "e.json")],
         "must be >= 0", lambda w: "--passes -1"),
    Case("ensemble: half-trained member", ensemble.main,
         lambda w: ["tune", "--runs", str(w.runs / "unet"), "--cache-dir", str(w.cache), "--out", str(w.root / "e.json")],
         "incomplete fold", lambda w: "fold1", setup=lambda w: w.fold("unet", "1").done_path.unlink(),
         untouched=lambda w: w.previous(w.root / "e.json")),
    # ---- submit
    Case("submit: no ensemble file", submit.main, lambda w: _submit_args(w, ensemble_json=w.root / "none.json"),
         "ensemble file not found", lambda w: "none.json", absent=lambda w: w.root / "sub.csv"),
    Case("submit: corrupt ensemble file", submit.main, lambda w: _submit_args(w), "unreadable ensemble file",
         lambda w: "ensemble.json", setup=lambda w: w.ensemble.write_text("{"),
         untouched=lambda w: w.previous(w.root / "sub.csv")),
    Case("submit: ensemble of another version", submit.main, lambda w: _submit_args(w), "ensemble file version 99",
         lambda w: "ensemble.json", setup=lambda w: _edit_ensemble(w, lambda r: r.update(version=99))),
    Case("submit: unknown ensemble parameter", submit.main, lambda w: _submit_args(w),
         "unknown ensemble parameter(s) sharpen", lambda w: "ensemble.json",
         setup=lambda w: _edit_ensemble(w, lambda r: r["params"].update(sharpen=2))),
    Case("submit: no test images and no sample", submit.main, lambda w: _submit_args(w), "nothing to submit",
         lambda w: "test", setup=lambda w: (shutil.rmtree(w.data / "test"), (w.data / "sample_submission.csv").unlink()),
         absent=lambda w: w.root / "sub.csv"),
    Case("submit: crafted best.pt in a member", submit.main, lambda w: _submit_args(w), "not a loadable checkpoint",
         lambda w: "unet/fold0/best.pt", setup=lambda w: (_ensemble_here(w), w.evil(w.fold().weights)),
         untouched=lambda w: w.previous(w.root / "sub.csv")),
    Case("submit: output under a regular file", submit.main, lambda w: _submit_args(w, w.root / "folds.csv" / "s.csv"),
         "is a file, not a folder", lambda w: "folds.csv"),
    Case("submit: member run deleted", submit.main, lambda w: _submit_args(w), "run folder not found",
         lambda w: "fpn", setup=lambda w: (_ensemble_here(w), shutil.rmtree(w.runs / "fpn")),
         untouched=lambda w: w.previous(w.root / "sub.csv")),
    # ---- score
    Case("score: no submission file", score.main,
         lambda w: ["--data-dir", str(w.data), "--truth", str(w.data / "train.csv"), "--pred", str(w.root / "none.csv")],
         "none.csv", lambda w: "none.csv"),
    Case("score: summary under a regular file", score.main,
         lambda w: ["--data-dir", str(w.data), "--truth", str(w.data / "train.csv"), "--pred", str(w.data / "train.csv"),
                    "--summary", str(w.root / "folds.csv" / "s.json")], "is a file, not a folder", lambda w: "folds.csv"),
    # ---- report and kernel
    Case("report: half-trained run", report.main,
         lambda w: ["--runs", str(w.runs / "unet"), "--cache-dir", str(w.cache), "--out", str(w.root / "rep")],
         "incomplete fold", lambda w: "fold0", setup=lambda w: w.fold().done_path.unlink(),
         absent=lambda w: w.root / "rep"),
    Case("kernel: no ensemble file", kernel.main,
         lambda w: ["build", "--ensemble", str(w.root / "none.json"), "--out", str(w.root / "k"), "--wheels", ""],
         "ensemble file not found", lambda w: "none.json", absent=lambda w: w.root / "k"),
    # ---- recipes
    Case("recipe: misspelled section", pipeline.main,
         lambda w: [str(_recipe(w, RECIPE.format(data=w.data) + "[ensembel]\npasses = 1\n")), "--dry-run"],
         "unknown key 'ensembel'", lambda w: "r.toml"),
    Case("recipe: misspelled model key", pipeline.main,
         lambda w: [str(_recipe(w, RECIPE.format(data=w.data) + "epoch = 3\n")), "--dry-run"],
         "unknown key 'epoch'", lambda w: "r.toml"),
    Case("recipe: folds not a list", pipeline.main,
         lambda w: [str(_recipe(w, RECIPE.format(data=w.data).replace("folds = [0]", "folds = 0"))), "--dry-run"],
         "folds = 0: expected list", lambda w: "r.toml"),
    Case("recipe: data without dir", pipeline.main,
         lambda w: [str(_recipe(w, RECIPE.format(data=w.data).replace(f'dir = "{w.data}"', 'path = "x"'))), "--dry-run"],
         "[data] lacks the required key 'dir'", lambda w: "r.toml"),
    Case("recipe: wrong value type", pipeline.main,
         lambda w: [str(_recipe(w, RECIPE.format(data=w.data) + 'lr = "fast"\n')), "--dry-run"],
         "lr = 'fast': expected int or float", lambda w: "r.toml"),
    Case("recipe: invalid value", pipeline.main,
         lambda w: [str(_recipe(w, RECIPE.format(data=w.data) + "batch_size = 0\n")), "--dry-run"],
         "--batch-size 0: must be at least 1", lambda w: "r.toml"),
    Case("recipe: not TOML", pipeline.main, lambda w: [str(_recipe(w, "name = \n")), "--dry-run"], "not valid TOML",
         lambda w: "r.toml"),
]


def test_the_catalogue_is_large_and_covers_every_stage():
    assert len(CASES) >= 40
    modules = {c.main.__module__ for c in CASES}
    assert modules >= {"src.make_folds", "src.prepare", "src.train", "src.predict", "src.ensemble", "src.submit",
                       "src.score", "src.report", "src.kernel", "src.pipeline"}


def temporaries(root: Path) -> list[Path]:
    """What an atomic writer leaves only when it fails to clean up: temporaries, probes, staging and
    old folders of a swap."""
    return [p for p in root.rglob(".*") if p.name.endswith((".tmp", ".probe", ".staging", ".old"))]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_exit_2(case, world, capsys):
    assert_one_line_exit_2(case, world, capsys)


def assert_one_line_exit_2(case: Case, world: World, capsys) -> None:
    """Run `case` through the CLI wrapper and check everything the catalogue promises."""
    case.setup(world)
    kept = case.untouched(world)
    before = kept.read_bytes() if kept is not None else None
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(case.main, case.argv(world))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert case.expect in errors[0] and case.names(world) in errors[0], errors[0]
    assert not world.marker.exists(), "a checkpoint executed code"
    if kept is not None:
        assert kept.read_bytes() == before, f"{kept} was changed"
    absent = case.absent(world)
    if absent is not None:
        assert not absent.exists(), f"{absent} was written"
    assert not temporaries(world.root), f"temporary files were left: {temporaries(world.root)}"


def test_a_corrupt_cache_entry_is_rewritten_by_prepare(world, capsys):
    """prepare repairs what predict refuses: a corrupt meta.json, a mask of another dtype or values."""
    meta = _cache_file(world, "meta.json")
    mask_path = _cache_file(world, "mask.npy")
    original = np.load(mask_path)
    meta.write_text("{")
    run_cli_ok(prepare.main, ["--data-dir", str(world.data), "--cache-dir", str(world.cache)])
    assert json.loads(meta.read_text())["arrays"]["mask"]["dtype"] == "uint8"
    np.save(mask_path, 1 - original)  # same dtype and shape, other values: the checksum tells
    run_cli_ok(prepare.main, ["--data-dir", str(world.data), "--cache-dir", str(world.cache)])
    assert "1 case-days written" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(mask_path), original)


def test_the_pipeline_resume_never_unpickles_a_crafted_last_pt(world, monkeypatch, capsys):
    """A started training step is resumed by the pipeline with --resume: a crafted last.pt is refused."""
    from src.engine.config import Seg2DConfig, config_from_args
    from src.orchestration.recipes import _state_path, load_recipe, plan

    recipe_path = _recipe(world, RECIPE.format(data=world.data))
    recipe = load_recipe(recipe_path)
    runs = world.root / "pruns"
    steps = plan(recipe, str(runs))
    step = next(s for s in steps if s.module == "src.train")
    cfg = config_from_args(Seg2DConfig, train.build_parser("seg2d").parse_args(step.argv))
    fold = fold_dir(runs, "m", 0)
    fold.path.mkdir(parents=True)
    from src.core.artifacts import FoldRecord

    fold.write_config(FoldRecord(dataclasses.asdict(cfg)))
    world.evil(fold.last)
    monkeypatch.chdir(world.root)
    # the folds and cache steps run first; the training step was started before (same stamp)
    for s in steps:
        if s.module != "src.train":
            s_main = {"src.make_folds": make_folds.main, "src.prepare": prepare.main}[s.module]
            assert s_main(list(s.argv)) == 0
    state = {step.name + ":started": step.stamp()}
    _state_path(recipe, str(runs)).parent.mkdir(parents=True, exist_ok=True)
    _state_path(recipe, str(runs)).write_text(json.dumps(state))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(pipeline.main, [str(recipe_path), "--runs-dir", str(runs)])
    out = capsys.readouterr()
    assert exit_info.value.code == 2 and "--resume" in out.out
    assert [line for line in out.err.splitlines() if line.startswith("error: ")] == [
        line for line in out.err.splitlines() if "last.pt: not a loadable checkpoint" in line]
    assert not world.marker.exists()


def run_cli_ok(main, argv) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    assert exit_info.value.code == 0


def _one_error_line(capsys, main, argv) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_disk_full_is_one_line_and_leaves_no_partial_file(world, monkeypatch, capsys):
    import errno

    import pandas as pd

    def full(self_or_path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self_or_path))

    monkeypatch.setattr(np, "save", full)
    line = _one_error_line(capsys, prepare.main, ["--data-dir", str(world.data), "--cache-dir", str(world.root / "c2")])
    assert "No space left on device" in line and "c2" in line
    assert not list((world.root / "c2").rglob("meta.json")) and not list((world.root / "c2").rglob("*.npy"))
    monkeypatch.undo()
    previous = world.previous(world.root / "sub.csv")
    monkeypatch.setattr(pd.DataFrame, "to_csv", lambda self, path, *a, **k: full(path))
    line = _one_error_line(capsys, submit.main, _submit_args(world))
    assert "No space left on device" in line and previous.read_text() == PREVIOUS
    assert sorted(p.name for p in world.root.iterdir() if p.name.startswith(".sub.csv")) == []


def test_a_training_loss_turning_nan_stops_with_the_run_named(world, monkeypatch, capsys):
    from src.engine.seg2d import Seg2DTask

    monkeypatch.setattr(Seg2DTask, "loss", lambda self, model, batch, device: model(
        batch["image"].to(device)).sum() * float("nan"))
    line = _one_error_line(capsys, train.main, _train_args(world, "--arch", "unet_tiny", "--name", "nan", "--fold", "0"))
    assert "training loss is nan at epoch 1, step 1" in line and "nan/fold0" in line
    assert not fold_dir(world.runs, "nan", 0).is_done()

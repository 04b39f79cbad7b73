"""Outputs never destroy what the user has: a folder output replaces only its own earlier output, no
output lands on an input or inside the data folder, names stay one folder deep, deeply nested JSON or
TOML is a one-line error, Ctrl-C is one line and exit code 130. The style of tests/test_faults.py:
exit code 2, exactly one `error:` line naming the file or flag, no traceback, a sentinel file of
the user's unchanged; the same world of tiny trained runs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_faults import (  # noqa: F401  (base and world are fixtures)
    PREVIOUS,
    RECIPE,
    Case,
    World,
    _ensemble_here,
    _first_cached,
    _one_error_line,
    _predict_args,
    _recipe,
    _submit_args,
    _train_args,
    base,
    run_cli_ok,
    temporaries,
    world,
)

from src import kernel, make_folds, pipeline, predict, prepare, report, score, submit, train
from src.core.artifacts import REPORT_MARKER, REPORT_PAGE, PredictionDir
from src.core.errors import run_cli

DEEP = 100_000  # deeper than the parsers' recursion limit
NESTED = 100  # parses, but deeper than src.core.readers.MAX_DEPTH


def sentinel(folder: Path) -> Path:
    """A file of the user's in `folder` (made if needed) that no command may change or delete."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "KEEP.txt"
    path.write_text(PREVIOUS)
    return path


def _report_args(w: World, out: Path) -> list[str]:
    return ["--runs", str(w.runs / "unet"), "--cache-dir", str(w.cache), "--out", str(out)]


def _kernel_args(w: World, out: Path) -> list[str]:
    return ["build", "--ensemble", str(w.ensemble), "--out", str(out), "--wheels", ""]


def _score_args(w: World, summary: Path, pred: Path | None = None) -> list[str]:
    return ["--data-dir", str(w.data), "--truth", str(w.data / "train.csv"), "--pred",
            str(pred or w.data / "train.csv"), "--summary", str(summary)]


def _edit_json(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def _deep_json(path: Path, key: str, depth: int) -> None:
    """Nest `depth` arrays under `key` of the JSON object in `path` (written as text: json.dumps
    itself would recurse)."""
    text = path.read_text().rstrip()
    path.write_text(text[:-1] + f', "{key}": ' + "[" * depth + "]" * depth + "}")


def _cache_symlink(w: World) -> None:
    """The first cached case-day folder replaced by a link to the second."""
    first = w.cache / "train" / _first_cached(w)
    second = sorted((w.cache / "train").iterdir())[1]
    shutil.rmtree(first)
    first.symlink_to(second, target_is_directory=True)


def _second_meta(w: World) -> Path:
    return sorted((w.cache / "train").iterdir())[1] / "meta.json"


CASES = [
    # ---- a folder output over a folder that is not the command's own
    Case("predict: --out is a user's folder", predict.main, lambda w: _predict_args(w, "unet", "--out", str(w.root / "mine")),
         "exists and is not a prediction folder", lambda w: "--out", untouched=lambda w: sentinel(w.root / "mine")),
    Case("predict: --out is the run itself", predict.main, lambda w: _predict_args(w, "unet", "--out", str(w.runs / "unet")),
         "would overwrite the input", lambda w: "--out", untouched=lambda w: sentinel(w.runs / "unet")),
    Case("predict: --out holds the run", predict.main, lambda w: _predict_args(w, "unet", "--out", str(w.runs)),
         "would overwrite the input", lambda w: "--out", untouched=lambda w: sentinel(w.runs)),
    Case("predict: --out inside the data folder", predict.main,
         lambda w: _predict_args(w, "unet", "--out", str(w.data / "pred")), "is inside the data folder",
         lambda w: "--out", absent=lambda w: w.data / "pred"),
    Case("report: --out is a user's folder", report.main, lambda w: _report_args(w, w.root / "mine"),
         "exists and is not a report", lambda w: "--out", untouched=lambda w: sentinel(w.root / "mine")),
    Case("report: --out is an index.html without the marker", report.main, lambda w: _report_args(w, w.root / "site"),
         "exists and is not a report", lambda w: "--out",
         setup=lambda w: (w.root / "site").mkdir() or (w.root / "site" / REPORT_PAGE).write_text("<html>"),
         untouched=lambda w: sentinel(w.root / "site")),
    Case("report: --out is the run", report.main, lambda w: _report_args(w, w.runs / "unet"),
         "would overwrite the input", lambda w: "--out", untouched=lambda w: sentinel(w.runs / "unet")),
    Case("kernel: --out is a user's folder", kernel.main, lambda w: _kernel_args(w, w.root / "mine"),
         "exists and is not a kernel bundle", lambda w: "--out", untouched=lambda w: sentinel(w.root / "mine")),
    Case("kernel: --out is a run of the ensemble", kernel.main, lambda w: _kernel_args(w, w.runs / "unet"),
         "would overwrite the input", lambda w: "--out", setup=_ensemble_here,
         untouched=lambda w: sentinel(w.runs / "unet")),
    # ---- a file output onto an input or into the data folder
    Case("folds: --out is the labels", make_folds.main,
         lambda w: ["--data-dir", str(w.data), "--out", str(w.data / "train.csv")], "is inside the data folder",
         lambda w: "--out", untouched=lambda w: w.data / "train.csv"),
    Case("score: --summary is the labels", score.main, lambda w: _score_args(w, w.data / "train.csv"),
         "would overwrite the input", lambda w: "--summary", untouched=lambda w: w.data / "train.csv"),
    Case("score: --summary is the submission", score.main,
         lambda w: _score_args(w, w.root / "sub.csv", pred=w.root / "sub.csv"), "would overwrite the input",
         lambda w: "--summary", setup=lambda w: shutil.copy2(w.data / "train.csv", w.root / "sub.csv"),
         untouched=lambda w: w.root / "sub.csv"),
    Case("score: --summary inside the data folder", score.main, lambda w: _score_args(w, w.data / "s.json"),
         "is inside the data folder", lambda w: "--summary", absent=lambda w: w.data / "s.json"),
    Case("submit: --out is the labels", submit.main, lambda w: _submit_args(w, w.data / "train.csv"),
         "is inside the data folder", lambda w: "--out", untouched=lambda w: w.data / "train.csv"),
    Case("submit: --out is the ensemble file", submit.main, lambda w: _submit_args(w, w.ensemble),
         "would overwrite the input", lambda w: "--out", untouched=lambda w: w.ensemble),
    # ---- names that would leave the runs folder
    Case("train: --name with ..", train.main, lambda w: _train_args(w, "--arch", "unet_tiny", "--name", "../x"),
         "must be a plain folder name", lambda w: "--name '../x'", absent=lambda w: w.root / "x"),
    Case("train: hidden --name", train.main, lambda w: _train_args(w, "--arch", "unet_tiny", "--name", ".x"),
         "must be a plain folder name", lambda w: "--name '.x'", absent=lambda w: w.runs / ".x"),
    Case("recipe: model name with ..", pipeline.main,
         lambda w: [str(_recipe(w, RECIPE.format(data=w.data).replace('name = "m"', 'name = "../m"'))),
                    "--runs-dir", str(w.root / "pruns")], "[[models]] 1 name '../m': must be a plain folder name",
         lambda w: "r.toml", absent=lambda w: w.root / "pruns"),
    Case("recipe: recipe name with ..", pipeline.main,
         lambda w: [str(_recipe(w, RECIPE.format(data=w.data).replace('name = "r"', 'name = "../r"'))),
                    "--runs-dir", str(w.root / "pruns")], "name '../r': must be a plain folder name",
         lambda w: "r.toml", absent=lambda w: w.root / "pruns"),
    # ---- deeply nested JSON and TOML
    Case("submit: ensemble.json nested past the recursion limit", submit.main, lambda w: _submit_args(w),
         "nested deeper than", lambda w: "ensemble.json", setup=lambda w: _deep_json(w.ensemble, "deep", DEEP),
         untouched=lambda w: w.previous(w.root / "sub.csv")),
    Case("predict: config.json nested 100 deep", predict.main, lambda w: _predict_args(w), "nested deeper than",
         lambda w: "config.json", setup=lambda w: _deep_json(w.fold().config_path, "deep", NESTED)),
    Case("predict: config.json past the recursion limit", predict.main, lambda w: _predict_args(w),
         "nested deeper than", lambda w: "config.json", setup=lambda w: _deep_json(w.fold().config_path, "deep", DEEP)),
    Case("predict: cache meta.json past the recursion limit", predict.main, lambda w: _predict_args(w),
         "corrupt cache entry", lambda w: "meta.json",
         setup=lambda w: _deep_json(w.cache / "train" / _first_cached(w) / "meta.json", "deep", DEEP)),
    Case("recipe: TOML past the recursion limit", pipeline.main,
         lambda w: [str(_recipe(w, "x = " + "[" * DEEP + "]" * DEEP + "\n" + RECIPE.format(data=w.data))), "--dry-run"],
         "nested deeper than", lambda w: "r.toml"),
    # ---- versions written as strings
    Case("predict: layout version as a string", predict.main, lambda w: _predict_args(w),
         "layout version '1' is not an integer", lambda w: "config.json",
         setup=lambda w: _edit_json(w.fold().config_path, lambda r: r.update(layout="1"))),
    Case("submit: ensemble version as a string", submit.main, lambda w: _submit_args(w),
         "ensemble file version '1' is not an integer", lambda w: "ensemble.json",
         setup=lambda w: _edit_json(w.ensemble, lambda r: r.update(version="1"))),
    # ---- a cache entry replaced by a symbolic link: named, neither followed nor deleted
    Case("prepare: cache entry is a symbolic link", prepare.main,
         lambda w: ["--data-dir", str(w.data), "--cache-dir", str(w.cache)], "found a symbolic link",
         lambda w: _first_cached(w), setup=_cache_symlink, untouched=_second_meta),
    # ---- a recipe's bad stage config is refused before any step runs
    Case("recipe: unknown loss before the folds", pipeline.main,
         lambda w: [str(_recipe(w, RECIPE.format(data=w.data) + 'loss = "dce"\n')), "--runs-dir", str(w.root / "pruns")],
         "unknown loss 'dce'", lambda w: "r.toml", absent=lambda w: w.root / "folds"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_output_is_one_line_exit_2_and_keeps_the_users_files(case, world, capsys, monkeypatch):
    monkeypatch.chdir(world.root)  # a recipe's relative outputs (folds/, submissions/) land in the world
    case.setup(world)
    kept = case.untouched(world)
    before = kept.read_bytes() if kept is not None else None
    line = _one_error_line(capsys, case.main, case.argv(world))
    assert line.startswith("error: ") and case.expect in line and case.names(world) in line, line
    if kept is not None:
        assert kept.read_bytes() == before, f"{kept} was changed"
    absent = case.absent(world)
    if absent is not None:
        assert not absent.exists(), f"{absent} was written"
    assert not temporaries(world.root), temporaries(world.root)


def test_the_outputs_catalogue_covers_every_writer():
    modules = {c.main.__module__ for c in CASES}
    assert modules >= {"src.make_folds", "src.predict", "src.report", "src.kernel", "src.score", "src.submit",
                       "src.train", "src.pipeline", "src.prepare"}


def test_rerunning_onto_its_own_output_works_and_spares_a_users_old_sibling(world):
    """predict, report and kernel build replace their own earlier output; a user's `<out>.old` folder
    beside it (the name the swap once used) survives."""
    pred = world.root / "pred"
    for out, main, argv, own in (
            (pred, predict.main, _predict_args(world, "unet", "--out", str(pred)), "predict.json"),
            (world.root / "rep", report.main, _report_args(world, world.root / "rep"), REPORT_MARKER),
            (world.root / "k", kernel.main, _kernel_args(world, world.root / "k"), "manifest.json")):
        kept = sentinel(out.with_name(out.name + ".old"))
        run_cli_ok(main, argv)
        first = (out / own).read_bytes()
        (out / "stale.txt").write_text("from the first run")
        run_cli_ok(main, argv)
        assert (out / own).read_bytes() == first and not (out / "stale.txt").exists()
        assert kept.read_text() == PREVIOUS
    assert PredictionDir(pred).files()


def test_an_empty_folder_is_a_valid_output(world):
    (world.root / "rep").mkdir()
    run_cli_ok(report.main, _report_args(world, world.root / "rep"))
    assert (world.root / "rep" / REPORT_PAGE).is_file()


def test_ctrl_c_is_one_line_exit_130_and_leaves_the_previous_prediction(world, capsys, monkeypatch):
    previous = world.previous(world.runs / "unet" / "pred_oof" / "predict.json")

    def interrupted(self, case_day, prediction):
        raise KeyboardInterrupt

    monkeypatch.setattr(PredictionDir, "save", interrupted)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(predict.main, _predict_args(world))
    err = capsys.readouterr().err
    assert exit_info.value.code == 130 and err.strip() == "error: interrupted", err
    assert previous.read_text() == PREVIOUS
    assert not temporaries(world.root)

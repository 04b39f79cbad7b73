"""Run a recipe end to end: `python -m src.pipeline recipes/demo`.

A recipe (TOML, under recipes/) names the data, the folds, the models (stage, arch, options,
folds), the ensemble and the outputs. The pipeline turns it into steps, each a stage command with
its arguments, and runs them in order. A step is skipped when its outputs exist and its stamp
(the hash of its command and of its inputs' sizes and times) matches the last completed run, so a
re-run after an interruption continues where it stopped; an interrupted training step resumes
from its last.pt.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from src.common import DataError, run_cli, write_json_atomic


@dataclass(frozen=True)
class Step:
    """One stage command: `python -m <module> <argv>`, with the files it reads and writes."""

    name: str
    module: str
    argv: tuple[str, ...]
    outputs: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    resumable: bool = False  # gets --resume when its outputs are incomplete but it was started
    once: bool = False  # done whenever its outputs exist (e.g. generated data is never regenerated)

    def stamp(self) -> str:
        """Hash of the command and of the inputs: file contents for files, sizes and times in folders."""
        digest = hashlib.sha256(json.dumps([self.module, self.argv]).encode())
        for path in map(Path, self.inputs):
            if path.is_file():
                digest.update(hashlib.sha256(path.read_bytes()).digest())
            for f in sorted(path.rglob("*")) if path.is_dir() else []:
                if f.is_file():
                    st = f.stat()
                    digest.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class Recipe:
    name: str
    data_dir: str
    synthetic: dict | None
    folds: dict
    models: tuple[dict, ...]
    ensemble: dict = field(default_factory=dict)
    submit: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe; `recipes/demo` also finds `recipes/demo.toml`."""
    path = Path(path)
    if not path.exists() and path.with_suffix(".toml").exists():
        path = path.with_suffix(".toml")
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: recipe not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{path}: not valid TOML ({exc})") from None
    for key in ("data", "folds", "models"):
        if key not in raw:
            raise DataError(f"{path}: recipe has no [{key}] section")
    for i, model in enumerate(raw["models"]):
        missing = {"name", "stage", "arch"} - set(model)
        if missing:
            raise DataError(f"{path}: model {i + 1} lacks {', '.join(sorted(missing))}")
    return Recipe(name=raw.get("name", path.stem), data_dir=raw["data"]["dir"],
                  synthetic=raw["data"].get("synthetic"), folds=raw["folds"], models=tuple(raw["models"]),
                  ensemble=raw.get("ensemble", {}), submit=raw.get("submit", {}), report=raw.get("report", {}))


def _flags(options: dict) -> list[str]:
    """{"img_size": 128, "amp": False} -> ["--img-size", "128", "--no-amp"]."""
    out = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            out += [flag, ",".join(str(v) for v in value)]
        else:
            out += [flag, str(value)]
    return out


def plan(recipe: Recipe, runs_dir: str = "runs") -> list[Step]:
    """The recipe's steps in order."""
    data = recipe.data_dir
    folds_csv = recipe.folds.get("out", f"folds/{recipe.name}_folds.csv")
    steps = []
    if recipe.synthetic is not None:
        steps.append(Step("synthetic data", "src.make_synthetic",
                          ("--out", data, *_flags(recipe.synthetic)), (f"{data}/train.csv",), once=True))
    fold_opts = {k: v for k, v in recipe.folds.items() if k != "out"}
    steps.append(Step("folds", "src.make_folds", ("--data-dir", data, "--out", folds_csv, *_flags(fold_opts)),
                      (folds_csv,), (f"{data}/train.csv",)))
    steps.append(Step("cache", "src.prepare", ("--data-dir", data, "--split", "all"), (), (f"{data}/train.csv",)))
    for model in recipe.models:
        options = {k: v for k, v in model.items() if k not in ("name", "stage", "arch", "folds")}
        for fold in model.get("folds", [0]):
            argv = ("--stage", model["stage"], "--arch", model["arch"], "--name", model["name"], "--fold", str(fold),
                    "--data-dir", data, "--folds-csv", folds_csv, "--out", runs_dir, *_flags(options))
            steps.append(Step(f"train {model['name']} fold {fold}", "src.train", argv,
                              (f"{runs_dir}/{model['name']}/fold{fold}/done.json",), (folds_csv,), resumable=True))
    return steps


def _state_path(recipe: Recipe, runs_dir: str) -> Path:
    return Path(runs_dir) / f"pipeline_{recipe.name}.json"


def run_steps(steps: list[Step], state_path: Path) -> list[tuple[str, str, float]]:
    """Run the steps that are not up to date; return (step, status, seconds) rows."""
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    rows = []
    for i, step in enumerate(steps, 1):
        stamp = step.stamp()
        outputs_exist = all(Path(p).exists() for p in step.outputs)
        done = outputs_exist and (step.once or state.get(step.name) == stamp)
        if done:
            print(f"[{i}/{len(steps)}] {step.name}: up to date, skipped", flush=True)
            rows.append((step.name, "skipped", 0.0))
            continue
        argv = list(step.argv)
        started_before = step.resumable and state.get(step.name + ":started") == stamp
        if started_before:
            argv.append("--resume")
        print(f"[{i}/{len(steps)}] {step.name}: python -m {step.module} {' '.join(argv)}", flush=True)
        state[step.name + ":started"] = stamp
        write_json_atomic(state_path, state)
        start = time.perf_counter()
        code = importlib.import_module(step.module).main(argv)
        if code:
            raise DataError(f"step '{step.name}' failed with exit code {code}")
        state[step.name] = step.stamp()  # inputs may be the step's own outputs (the cache)
        write_json_atomic(state_path, state)
        rows.append((step.name, "resumed" if started_before else "ran", time.perf_counter() - start))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="a recipe file, e.g. recipes/demo")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--dry-run", action="store_true", help="print the steps and exit")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe)
    steps = plan(recipe, args.runs_dir)
    if args.dry_run:
        for i, step in enumerate(steps, 1):
            print(f"[{i}/{len(steps)}] {step.name}: python -m {step.module} {' '.join(step.argv)}")
        return 0
    start = time.perf_counter()
    rows = run_steps(steps, _state_path(recipe, args.runs_dir))
    print(f"\nrecipe {recipe.name}: {len(rows)} steps in {time.perf_counter() - start:.0f} s")
    for name, status, seconds in rows:
        print(f"  {name:<40} {status:<8} {seconds:8.1f} s")
    return 0


if __name__ == "__main__":
    run_cli(main)

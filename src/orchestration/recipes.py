"""Recipes as steps (the library of `python -m src.pipeline`, whose help describes the steps).

`load_recipe` reads and validates a recipe (src.orchestration.schema) on data of any known format
(`[data] format`, else detected from the folder, else the GI layout), `plan` turns it into `Step`s
(a stage module, its arguments, the files it reads and writes, its log and resources), `run_recipe`
runs the steps that are not up to date, by stamp, adding --resume to a started training
(src.orchestration.steps, .execution: locally or on Ray), and `results`, `contribution_column` /
`comparison_table` read the headline numbers and the held-out contributions back from the artifacts.
"""
from __future__ import annotations

import inspect
import shlex
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from src.core.artifacts import REPORT_PAGE, RunDir, fold_dir, read_ensemble
from src.core.atomic import write_text_atomic
from src.core.errors import DataError
from src.core.options import to_flags
from src.core.outputs import check_name, synthetic_truth
from src.core.readers import read_json_object, read_toml
from src.data.formats import detect_format, get_format
from src.data.synthetic2d import GENERATORS
from src.data.volumes import cache_dir_for
from src.engine.stages import get_stage
from src.ensembling import choice, contributions
from src.orchestration.execution import address_field, check_executor, executor_field, open_executor, run_graph
from src.orchestration.schema import NOT_TRAINING, validate_recipe
from src.orchestration.steps import StampLedger, Step

TEST_COUNT_KEYS = {"gi": "test_cases", "carvana": "test_cars", "nnunet": "test_cases"}  # generator options


@dataclass(frozen=True)
class Recipe:
    name: str
    data_dir: str
    synthetic: dict | None
    folds: dict
    models: tuple[dict, ...]
    format: str = "gi"  # the data's layout (src.data.formats)
    ensemble: dict | None = None  # no [ensemble] section: the recipe stops after training
    ablation: dict | None = None  # an [ablation] section: the study src.ablate runs on the data
    submit: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    compare: tuple[str, ...] = ()  # recipes run first (on the same data) and printed beside this one

    @property
    def data_marker(self) -> str:
        """The file that stands for the data in the steps' inputs (the folder, where no file does)."""
        marker = get_format(self.format).marker
        return f"{self.data_dir.rstrip('/')}/{marker}" if marker else self.data_dir

    def model(self, name: str) -> dict:
        for model in self.models:
            if model["name"] == name:
                return model
        raise DataError(f"recipe {self.name}: no model named {name!r} (models: "
                        f"{', '.join(m['name'] for m in self.models)})")


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe; `recipes/demo` also finds `recipes/demo.toml`."""
    path = Path(path)
    if not path.exists() and path.with_suffix(".toml").exists():
        path = path.with_suffix(".toml")
    raw = read_toml(path, "recipe")
    validate_recipe(path, raw)
    compare = tuple(str(path.parent / c if not Path(c).exists() and (path.parent / c).with_suffix(".toml").exists()
                        else c) for c in raw.get("compare", []))
    return Recipe(name=check_name(raw.get("name", path.stem), f"{path}: name"), data_dir=raw["data"]["dir"],
                  synthetic=raw["data"].get("synthetic"), folds=raw.get("folds", {}), models=tuple(raw.get("models", [])),
                  format=_data_format(raw["data"]), ensemble=raw.get("ensemble"), ablation=raw.get("ablation"),
                  submit=raw.get("submit", {}), report=raw.get("report", {}), compare=compare)


def _data_format(data: dict) -> str:
    """`[data] format`; else the format of the folder when it exists; else the GI layout (what
    src.make_synthetic writes by default). Why not always detect: generated data does not exist yet
    when the recipe is planned."""
    if "format" in data:
        return data["format"]
    return detect_format(data["dir"]).name if Path(data["dir"]).is_dir() else "gi"


@dataclass(frozen=True)
class Outputs:
    """Where a recipe's final artifacts go."""

    ensemble: str
    submission: str
    truth: str | None
    score: str
    report: str


def outputs(recipe: Recipe, runs_dir: str = "runs") -> Outputs:
    truth = recipe.submit.get("truth")
    if truth is None and recipe.synthetic and _has_test_split(recipe):
        truth = str(synthetic_truth(recipe.format, recipe.data_dir.rstrip("/")))  # where src.make_synthetic puts it
    csv = get_format(recipe.format).submission.endswith("_csv")  # else a folder of label images
    submission = recipe.submit.get("out", f"submissions/{recipe.name}{'.csv' if csv else ''}")
    return Outputs(ensemble=(recipe.ensemble or {}).get("out", f"{runs_dir}/ensemble_{recipe.name}.json"),
                   submission=submission, truth=truth, score=str(Path(submission).with_suffix(".score.json")),
                   report=recipe.report.get("out", f"reports/{recipe.name}"))


def _has_test_split(recipe: Recipe) -> bool:
    """Whether the recipe's synthetic data has test images with a truth: its generator's count of test
    cars or cases, as given, else the generator's own default."""
    key = TEST_COUNT_KEYS.get(recipe.format)
    if key is None:  # a format whose generator writes no test split (EBHI-Seg)
        return False
    default = inspect.signature(GENERATORS[recipe.format]).parameters[key].default
    return (recipe.synthetic or {}).get(key, default) > 0


def _oof_manifest(runs_dir: str, name: str) -> str:
    """The manifest of a run's OOF predicted again (with its model's `tta`), written last."""
    return str(RunDir(Path(runs_dir) / name).predictions("oof").manifest_path)


def _fold_done_files(recipe: Recipe, name: str, runs_dir: str) -> tuple[str, ...]:
    """The done marker of every fold the recipe trains of model `name`."""
    return tuple(str(fold_dir(runs_dir, name, f).done_path) for f in recipe.model(name).get("folds", [0]))


def _done_files(recipe: Recipe, names: list[str], runs_dir: str) -> tuple[str, ...]:
    """What the ensemble waits for: every fold's done marker, and the OOF of a model with `tta`."""
    return tuple(f for n in names for f in _fold_done_files(recipe, n, runs_dir)) \
        + tuple(_oof_manifest(runs_dir, n) for n in names if recipe.model(n).get("tta"))


def _final_steps(recipe: Recipe, runs_dir: str) -> list[Step]:
    """Ensemble tuning on OOF, the test submission, its score when the truth is known, the report."""
    out = outputs(recipe, runs_dir)
    ens = dict(recipe.ensemble)
    members = ens.pop("runs", [m["name"] for m in recipe.models if get_stage(m["stage"]).segmenter])
    helpers = [ens[k] for k in ("gate", "crop") if ens.get(k)]
    argv = ["tune", "--runs", *(f"{runs_dir}/{n}" for n in members)]
    for key in ("gate", "crop"):
        if ens.get(key):
            argv += [f"--{key}", f"{runs_dir}/{ens.pop(key)}"]
    ens.pop("out", None)
    steps = [Step("ensemble", "src.ensemble", (*argv, "--out", out.ensemble, *to_flags(ens)), (out.ensemble,),
                  _done_files(recipe, members + helpers, runs_dir), cpus=ens.get("workers", 1))]
    submit_opts = {k: v for k, v in recipe.submit.items() if k not in ("out", "truth")}
    steps.append(Step("submission", "src.submit", ("--ensemble", out.ensemble, "--data-dir", recipe.data_dir,
                                                   "--out", out.submission, *to_flags(submit_opts)),
                      (out.submission,), (out.ensemble,), gpus=_gpus(recipe.submit)))
    if out.truth:
        steps.append(Step("score", "src.score", ("--data-dir", recipe.data_dir, "--truth", out.truth, "--pred",
                                                 out.submission, "--summary", out.score),
                          (out.score,), (out.submission, out.truth)))
    if recipe.report.get("enabled", True):  # `enabled = false` under [report] leaves it out
        runs = [f"{runs_dir}/{m['name']}" for m in recipe.models]
        steps.append(Step("report", "src.report", ("--runs", *runs, "--ensemble", out.ensemble,
                                                   "--title", f"recipe {recipe.name}", "--out", out.report),
                          (f"{out.report}/{REPORT_PAGE}",), (out.ensemble,)))
    return steps


def _gpus(options: dict) -> int:
    """The GPUs a step of these options takes where there are some: `gpus`, else one unless on the CPU."""
    return options.get("gpus", 0 if options.get("device") == "cpu" else 1)


def _with_log(step: Step, recipe: Recipe, runs_dir: str) -> Step:
    """The step with its log: a training's beside its fold (fold<k>.log), others' under runs/logs/<recipe>/."""
    return step if step.log else replace(step, log=f"{runs_dir}/logs/{recipe.name}/{step.name.replace(' ', '_')}.log")


def _ablation_step(recipe: Recipe) -> Step:
    """`src.ablate` on the recipe's data: the section's keys as its flags, the data folder added to the base."""
    study = dict(recipe.ablation)
    out = study.pop("out", f"reports/{recipe.name}")
    argv = ["--base", f"{study.pop('base')} --data-dir {recipe.data_dir}"]
    for vary in study.pop("vary", []):
        argv += ["--vary", vary]
    return Step("ablation", "src.ablate", (*argv, *to_flags(study), "--out", out), (f"{out}/ablation.md",),
                (recipe.data_marker,))


def plan(recipe: Recipe, runs_dir: str = "runs") -> list[Step]:
    """The recipe's steps in order, each after the steps whose outputs it reads."""
    data, marker = recipe.data_dir, recipe.data_marker
    forced = () if recipe.format == "gi" else ("--format", recipe.format)  # the default layout goes unnamed
    folds_csv = recipe.folds.get("out", f"folds/{recipe.name}_folds.csv")
    steps = []
    if recipe.synthetic is not None:
        steps.append(Step("synthetic data", "src.make_synthetic",
                          ("--out", data, *forced, *to_flags(recipe.synthetic)), (marker,), once=True))
    if recipe.ablation is not None:
        steps.append(_ablation_step(recipe))
    if not recipe.models:
        return [_with_log(step, recipe, runs_dir) for step in steps]
    fold_opts = {k: v for k, v in recipe.folds.items() if k != "out"}
    steps.append(Step("folds", "src.make_folds", ("--data-dir", data, *forced, "--out", folds_csv,
                                                  *to_flags(fold_opts)), (folds_csv,), (marker,)))
    cache = str(cache_dir_for("", data))
    steps.append(Step("cache", "src.prepare", ("--data-dir", data, *forced, "--split", "all"), (cache,), (marker,),
                      always=True))
    for model in recipe.models:
        options = {k: v for k, v in model.items() if k not in ("stage", "arch", *NOT_TRAINING)}
        for fold in model.get("folds", [0]):
            argv = ("--stage", model["stage"], "--arch", model["arch"], "--name", model["name"], "--fold", str(fold),
                    "--data-dir", data, "--folds-csv", folds_csv, "--out", runs_dir, *to_flags(options))
            where = fold_dir(runs_dir, model["name"], fold)
            steps.append(Step(f"train {model['name']} fold {fold}", "src.train", argv, (str(where.done_path),),
                              (folds_csv, str(cache_dir_for(model.get("cache_dir", ""), data))), resumable=True,
                              log=f"{where.final_path}.log", cpus=model.get("cpus", 1), gpus=_gpus(model),
                              procs=max(1, _gpus(model))))
        if model.get("tta"):
            device = ("--device", model["device"]) if "device" in model else ()
            steps.append(Step(f"predict {model['name']} oof", "src.predict",
                              ("--run", f"{runs_dir}/{model['name']}", "--split", "oof", "--tta", model["tta"], *device),
                              (_oof_manifest(runs_dir, model["name"]),), _fold_done_files(recipe, model["name"], runs_dir),
                              gpus=_gpus(model)))
    if recipe.ensemble is not None:
        steps += _final_steps(recipe, runs_dir)
    return [_with_log(step, recipe, runs_dir) for step in steps]


def results(recipe: Recipe, runs_dir: str = "runs") -> dict:
    """The recipe's headline numbers from its artifacts: OOF scores from ensemble.json, test score."""
    out = outputs(recipe, runs_dir)
    row: dict = {"recipe": recipe.name}
    if Path(out.ensemble).exists():
        scores = read_ensemble(out.ensemble).record["scores"]
        # "final": what the submission uses, the tuner's choice (src.ensembling.choice)
        written = scores.get(choice.WRITTEN) or {  # a file tuned before the final choice: its tuned parameters
            "name": choice.TUNED, "in_sample": scores["tuned_in_sample"], "held_out": scores.get("tuned_held_out")}
        row["oof best model @0.5"] = max((s["score"] for s in scores.get("models", {}).values()), default=None)
        row["oof plain mean @0.5"] = scores["plain_mean"]["score"]
        row["oof tuned (held-out)"] = scores.get("tuned_held_out", {}).get("score")
        row["oof final (in-sample)"] = written["in_sample"]["score"]
        row["oof final (held-out)"] = (written["held_out"] or {}).get("score")
        row["final choice"] = written["name"]
    if Path(out.score).exists():
        test = read_json_object(out.score, "score summary")  # GI: score, dice, hausdorff; 2D: dice, jaccard, ...
        row.update({"test score": test.get("score", test["dice"]),
                    **{f"test {k}": test[k] for k in ("dice", "hausdorff", "jaccard") if k in test}})
    if recipe.ablation is not None:
        row["ablation table"] = str(Path(recipe.ablation.get("out", f"reports/{recipe.name}")) / "ablation.md")
    return row


def contribution_column(recipe: Recipe, runs_dir: str = "runs") -> dict:
    """The recipe's held-out contributions from ensemble.json: component -> its delta (the score lost
    without it), "not used" or "skipped"; only the recipe's name without a held-out estimate."""
    out = outputs(recipe, runs_dir)
    column = {"recipe": recipe.name}
    if Path(out.ensemble).exists():
        for row in read_ensemble(out.ensemble).record["scores"].get(contributions.KEY, []):
            column[row["component"]] = contributions.in_a_word(row)
    return column


def comparison_table(rows: list[dict], title: str = "") -> str:
    """Recipes side by side: one column per recipe, one line per number (or word); `title` heads the
    first column."""
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "recipe"]
    width = max((len(k) for k in (title, *keys) if k), default=8) + 2
    cols = [max(len(r["recipe"]), 8, *(len(v) for v in r.values() if isinstance(v, str))) + 2 for r in rows]
    lines = [f"{title:<{width}}" + "".join(f"{r['recipe']:>{w}}" for r, w in zip(rows, cols))]
    for key in keys:
        cells = [r[key] if isinstance(r.get(key), str) else "-" if r.get(key) is None else f"{r[key]:.4f}"
                 for r in rows]
        lines.append(f"{key:<{width}}" + "".join(f"{c:>{w}}" for c, w in zip(cells, cols)))
    return "\n".join(lines)


def _state_path(recipe: Recipe, runs_dir: str) -> Path:
    return Path(runs_dir) / f"pipeline_{recipe.name}.json"


def run_recipe(recipe: Recipe, runs_dir: str, executor) -> None:
    steps = plan(recipe, runs_dir)
    start = time.perf_counter()
    print(f"== recipe {recipe.name}: {len(steps)} steps", flush=True)
    rows = run_graph(steps, StampLedger(_state_path(recipe, runs_dir)), executor, lambda text: print(text, flush=True))
    print(f"\nrecipe {recipe.name}: {len(rows)} steps in {time.perf_counter() - start:.0f} s")
    for name, status, seconds in rows:
        print(f"  {name:<40} {status:<8} {seconds:8.1f} s")


@dataclass(frozen=True)
class PipelineOptions:
    """What `python -m src.pipeline` was asked."""

    recipe: str = field(metadata={"help": "a recipe file, e.g. recipes/demo", "positional": True})
    runs_dir: str = "runs"
    dry_run: bool = field(default=False, metadata={"help": "print the steps and exit"})
    no_compare: bool = field(default=False, metadata={"help": "skip the recipes named by the recipe's compare"})
    executor: str = executor_field()
    address: str = address_field()

    def __post_init__(self):
        check_executor(self.executor)


def run_pipeline(opts: PipelineOptions) -> None:
    """Run the recipe (after the recipes it compares with, on the same data) and print them side by side."""
    recipe = load_recipe(opts.recipe)
    recipes = ([] if opts.no_compare else [load_recipe(c) for c in recipe.compare]) + [recipe]
    for other in recipes[:-1]:
        if other.data_dir != recipe.data_dir:
            raise DataError(f"recipe {other.name} runs on {other.data_dir}, not {recipe.data_dir}: "
                            "compared recipes must share the data")
    if opts.dry_run:
        for r in recipes:
            steps = plan(r, opts.runs_dir)
            for i, step in enumerate(steps, 1):
                print(f"[{r.name} {i}/{len(steps)}] {step.name}: python -m {step.module} {shlex.join(step.argv)}")
        return
    with open_executor(opts.executor, opts.address) as executor:
        for r in recipes:
            run_recipe(r, opts.runs_dir, executor)
    table = comparison_table([results(r, opts.runs_dir) for r in recipes])
    contribution = [contribution_column(r, opts.runs_dir) for r in recipes]
    if any(len(c) > 1 for c in contribution):
        table += "\n\n" + comparison_table(contribution, contributions.TITLE)
    write_text_atomic(Path(opts.runs_dir) / f"pipeline_{recipe.name}_results.txt", table + "\n")
    print("\n" + table)

"""Options defined once (src.core.options): flags from a dataclass's fields with help from their
metadata, options built by keyword, the one dict-to-flags rule; and every entry point's parser
exposes every field of its options class."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from src.core.errors import DataError
from src.core.options import add_arguments, changed, from_args, parse_flags, parse_value, to_flags

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, kw_only=True)
class Sample:
    run: Path = field(metadata={"help": "the run folder"})
    size: int = field(default=64, metadata={"help": "image side"})
    lr: float = 1e-3
    mode: str = field(default="a", metadata={"choices": ("a", "b")})
    amp: bool = field(default=True, metadata={"help": "mixed precision"})
    incomplete: bool = field(default=False, metadata={"help": "allow unfinished folds"})
    tta: tuple[str, ...] = ()
    folds: tuple[int, ...] | None = None
    runs: tuple[Path, ...] = field(default=(Path("x"),), metadata={"nargs": "+", "metavar": "RUN"})
    cache: Path | None = None
    batch: int | None = None
    limit_mb: float = field(default=0.0, metadata={"flag": "--limit", "metavar": "MB"})


@dataclass(frozen=True)
class Child(Sample):
    size: int = 32  # overridden default: the help comes from Sample's field


def parser_of(cls, **kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_arguments(parser, cls, **kwargs)
    return parser


def actions(parser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions}


def test_one_flag_per_field_with_help_from_metadata():
    parser = parser_of(Sample)
    by_dest = actions(parser)
    assert {f.name for f in dataclasses.fields(Sample)} <= set(by_dest)
    assert by_dest["size"].option_strings == ["--size"] and by_dest["size"].help == "image side"
    assert by_dest["run"].required and not by_dest["size"].required
    assert by_dest["mode"].choices == ("a", "b") and by_dest["runs"].metavar == "RUN"
    assert by_dest["amp"].option_strings == ["--amp", "--no-amp"]  # defaults to True: --no-amp turns it off
    assert by_dest["incomplete"].option_strings == ["--incomplete"]  # defaults to False: a plain switch
    assert by_dest["limit_mb"].option_strings == ["--limit"] and by_dest["limit_mb"].metavar == "MB"
    assert actions(parser_of(Child))["size"].help == "image side" and actions(parser_of(Child))["size"].default == 32
    assert from_args(Sample, parser.parse_args(["--run", "r"])) == Sample(run=Path("r"))


def test_types_from_the_annotations():
    args = parser_of(Sample).parse_args(
        ["--run", "r", "--size", "3", "--lr", "0.5", "--no-amp", "--incomplete", "--tta", "hflip,vflip",
         "--folds", "1,2", "--runs", "a", "b", "--cache", "c", "--batch", "2", "--mode", "b", "--limit", "3"])
    opts = from_args(Sample, args)  # by keyword: Sample takes no positional arguments
    assert opts == Sample(run=Path("r"), size=3, lr=0.5, mode="b", amp=False, incomplete=True, tta=("hflip", "vflip"),
                          folds=(1, 2), runs=(Path("a"), Path("b")), cache=Path("c"), batch=2, limit_mb=3.0)
    none = from_args(Sample, parser_of(Sample).parse_args(["--run", "r", "--folds", "none", "--tta", ""]))
    assert none.folds == () and none.tta == () and none.cache is None and none.batch is None
    for bad in (["--run", "r", "--size", "big"], ["--run", "r", "--mode", "c"]):
        with pytest.raises(argparse.ArgumentError):
            parser_of(Sample).parse_args(bad)
    with pytest.raises(DataError, match=r"^--folds '1,x': expected comma-separated int values or 'none'$"):
        parser_of(Sample).parse_args(["--run", "r", "--folds", "1,x"])  # one line, as run_cli prints it


def test_cli_defaults_and_given_only():
    assert actions(parser_of(Sample, defaults={"size": 7}))["size"].default == 7
    parser = parser_of(Sample, given_only=True)
    by_dest = actions(parser)
    assert all(a.default is None for d, a in by_dest.items() if d != "help")
    assert by_dest["size"].help == "image side (default: 64)" and by_dest["lr"].help == "(default: 0.001)"
    assert by_dest["incomplete"].option_strings == ["--incomplete", "--no-incomplete"]
    assert not by_dest["run"].required
    opts = from_args(Sample, parser.parse_args(["--size", "5"]), base={"run": Path("b"), "size": 9, "lr": 0.1})
    assert opts == Sample(run=Path("b"), size=5, lr=0.1)  # defaults, then the base, then the flags given


def _pair(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise DataError(f"--pairs: expected K=V, got {text!r}")
    return tuple(text.split("=", 1))


@dataclass(frozen=True)
class Parsed:
    words: tuple[str, ...] = field(default=(), metadata={"parse": lambda text: tuple(text.split())})
    pairs: tuple[tuple[str, str], ...] = field(default=(), metadata={"parse": _pair, "append": True, "metavar": "K=V"})


def test_a_parse_converter_and_an_appended_flag():
    """"parse" converts the flag's one token into any value; "append" repeats the flag, one element per use."""
    opts = from_args(Parsed, parser_of(Parsed).parse_args(["--words", "a b", "--pairs", "x=1", "--pairs", "y=2=3"]))
    assert opts == Parsed(words=("a", "b"), pairs=(("x", "1"), ("y", "2=3")))
    assert from_args(Parsed, parser_of(Parsed).parse_args([])) == Parsed()  # the fields' defaults
    assert actions(parser_of(Parsed))["pairs"].metavar == "K=V"
    with pytest.raises(DataError, match=r"^--pairs: expected K=V, got 'z'$"):  # raised as it is, one line
        parser_of(Parsed).parse_args(["--pairs", "z"])


def test_dict_to_flags_round_trip():
    assert to_flags({"img_size": 128, "amp": False}) == ["--img-size", "128", "--no-amp"]
    assert to_flags({"tta": ("hflip", "vflip"), "gate": None, "sizes": ["64x64"]}) == ["--tta", "hflip,vflip",
                                                                                      "--sizes", "64x64"]
    opts = Sample(run=Path("r"), size=3, lr=0.1 + 0.2, amp=False, incomplete=True, tta=("hflip",), folds=(1, 2),
                  cache=Path("c"), batch=4)
    assert set(changed(opts)) == {"run", "size", "lr", "amp", "incomplete", "tta", "folds", "cache", "batch"}
    assert from_args(Sample, parser_of(Sample).parse_args(to_flags(changed(opts)))) == opts
    assert changed(Sample(run=Path("r"))) == {"run": Path("r")}


def test_parse_flags_and_values_are_one_line_errors():
    given, rest = parse_flags(Sample, ("--size", "3", "--no-amp", "--resume", "x"), "--base")
    assert given == {"size": 3, "amp": False} and rest == ["--resume", "x"]
    with pytest.raises(DataError, match="--base: argument --size: invalid int value: 'big'"):
        parse_flags(Sample, ("--size", "big"), "--base")
    with pytest.raises(DataError, match="--base: argument --size: expected one argument"):
        parse_flags(Sample, ("--size",), "--base")
    assert parse_flags(Sample, ("--si", "3"), "--base")[1] == ["--si", "3"]  # no abbreviations
    assert parse_value(Sample, "amp", "false") is False and parse_value(Sample, "folds", "3,4") == (3, 4)
    assert parse_value(Sample, "lr", "1e-2") == 0.01
    with pytest.raises(DataError, match=r"--folds 'a': expected comma-separated int"):
        parse_value(Sample, "folds", "a")
    with pytest.raises(DataError, match=r"--lr 'x': expected float"):
        parse_value(Sample, "lr", "x")
    with pytest.raises(DataError, match=r"--amp 'maybe': expected bool"):
        parse_value(Sample, "amp", "maybe")


# ---- every entry point ---------------------------------------------------------------------------------
def _entry_points():
    from src.data.preparation import PrepareOptions
    from src.engine.stages import get_stage, stage_names
    from src.ensembling.submission import SubmitOptions
    from src.ensembling.tune import TuneOptions
    from src.inference.predict import PredictOptions
    from src.metrics.scoring import ScoreOptions
    from src.orchestration.recipes import PipelineOptions
    from src.reporting.options import ReportOptions
    from src.research.ablation import AblationOptions
    from src.research.benchmark import BenchmarkOptions
    from src.research.pruning import PruneOptions

    points = [("predict", None, PredictOptions), ("ensemble", "tune", TuneOptions), ("submit", None, SubmitOptions),
              ("report", None, ReportOptions), ("pipeline", None, PipelineOptions),
              ("benchmark", "models", BenchmarkOptions), ("prune", None, PruneOptions),
              ("prepare", None, PrepareOptions), ("score", None, ScoreOptions), ("ablate", None, AblationOptions)]
    return points + [("train", stage, get_stage(stage).config) for stage in stage_names()]


def _parser(module: str, sub: str | None) -> argparse.ArgumentParser:
    build = importlib.import_module(f"src.{module}").build_parser
    if module == "train":
        return build(sub)
    parser = build()
    if sub is None:
        return parser
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[sub]


@pytest.mark.parametrize("module,sub,options", _entry_points(), ids=lambda v: getattr(v, "__name__", v))
def test_every_entry_point_exposes_every_field(module, sub, options):
    by_dest = actions(_parser(module, sub))
    for f in dataclasses.fields(options):
        assert f.name in by_dest, f"python -m src.{module}: no flag for {options.__name__}.{f.name}"
        if "help" in f.metadata:
            assert by_dest[f.name].help.startswith(f.metadata["help"]), f.name


def test_nothing_builds_options_positionally():
    """Options and configs are built by keyword (src.core.options.from_args, or name=value)."""
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args \
                    and node.func.id.endswith(("Options", "Config")):
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno}: {node.func.id}(...) with positional arguments")

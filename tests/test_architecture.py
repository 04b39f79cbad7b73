"""The house rules, checked on the source: layers import only downwards, artifact file names are
spelt in src.core.artifacts only, every stage is registered once, every arch builds and runs."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.engine.stages import STAGE_MODULES, list_stages
from src.models.registry import create_model, list_archs

SRC = Path(__file__).resolve().parent.parent / "src"

# Lower number = lower layer; a module may import its own layer or lower ones, never higher.
LAYERS = {
    "core": 0,
    "models": 1, "data": 1, "metrics": 1,
    "engine": 2,
    "inference": 3,
    "ensembling": 4,
    "reporting": 5, "kaggle": 5, "orchestration": 5, "research": 5,
    "bench": 6,
}
ENTRY_LAYER = 7  # src/<stage>.py: the commands users run
ARTIFACT_NAMES = {"best.pt", "last.pt", "done.json", "config.json", "log.csv", "oof_scores.csv", "oof.staging",
                  "predict.json", "image.npy", "mask.npy", "meta.json", "index.html", "report.json",
                  "description.json", "submission.json"}


def _layer(module: str) -> int | None:
    """Layer of `src.x.y`; None outside the project."""
    parts = module.split(".")
    if parts[0] != "src" or len(parts) == 1:
        return None
    return LAYERS[parts[1]] if parts[1] in LAYERS else ENTRY_LAYER


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "src":  # `from src import x`
                found += [(node.lineno, f"src.{alias.name}") for alias in node.names]
    return found


SOURCES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path):
    module = _module_name(path)
    own = _layer(module)
    if own is None or module == "src":
        return
    bad = [(line, name) for line, name in _imports(ast.parse(path.read_text()))
           if _layer(name) is not None and _layer(name) > own and name != "src"]
    # an entry point may import libraries, never another entry point
    if own == ENTRY_LAYER:
        bad = [(line, name) for line, name in _imports(ast.parse(path.read_text()))
               if _layer(name) == ENTRY_LAYER and name not in ("src", module)]
    assert not bad, f"{module} imports upwards: " + ", ".join(f"line {line}: {name}" for line, name in bad)


def test_no_library_imports_an_entry_point():
    libraries = [p for p in SOURCES if _layer(_module_name(p)) not in (None, ENTRY_LAYER) and p.parent != SRC]
    assert len(libraries) > 30
    for path in libraries:
        entries = [name for _, name in _imports(ast.parse(path.read_text())) if _layer(name) == ENTRY_LAYER]
        assert not entries, f"{path.relative_to(SRC)} imports entry point(s) {entries}"


def _string_constants(tree: ast.AST) -> list[tuple[int, str]]:
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_artifact_file_names_are_spelt_in_core_artifacts_only():
    owner = SRC / "core" / "artifacts.py"
    spelt = {value for _, value in _string_constants(ast.parse(owner.read_text()))}
    assert ARTIFACT_NAMES <= spelt
    for path in SOURCES:
        if path == owner:
            continue
        hits = [(line, value) for line, value in _string_constants(ast.parse(path.read_text()))
                if any(name in value for name in ARTIFACT_NAMES)]
        assert not hits, f"{path.relative_to(SRC)} spells artifact names: {hits}"


def test_every_stage_is_registered_once_with_a_known_group():
    stages = list_stages()
    assert [s.name for s in stages] == sorted(m.rsplit(".", 1)[1] for m in STAGE_MODULES)
    for spec in stages:
        assert (spec.group in ("2d", "3d")) == spec.segmenter, spec.name
        assert list_archs(stage=spec.name), f"stage {spec.name} has no arch"


# The input of each stage's models, and the output shape expected (None: the detector's raw maps).
STAGE_IO = {"seg2d": (dict(in_channels=5, classes=3), (1, 5, 64, 64), (1, 3, 64, 64)),
            "cls": (dict(in_channels=5, classes=3), (1, 5, 64, 64), (1, 3)),
            "seg3d": (dict(in_channels=1, classes=3), (1, 1, 16, 32, 32), (1, 3, 16, 32, 32)),
            "det": (dict(classes=2), (1, 3, 64, 64), None)}


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@pytest.mark.parametrize("spec", list_archs(), ids=lambda a: a.name)
def test_every_registered_arch_builds_and_runs_one_forward(spec):
    """On the meta device (shapes only, no memory) where the arch allows it, else for real at a tiny size."""
    kwargs, shape, expected = STAGE_IO[spec.stage]
    try:
        if spec.stage == "det":  # ultralytics keeps module-level state from a build: never on meta
            raise RuntimeError("built for real")
        with torch.device("meta"):
            model = create_model(spec.name, **kwargs)
            out = model.eval()(torch.zeros(shape))
    except RuntimeError:  # ops that read tensor values (mit attention, YOLO's stride probe) need real tensors
        model = create_model(spec.name, **kwargs)
        with torch.no_grad():
            out = (model.eval() if spec.stage != "det" else model)(torch.zeros(shape))
    assert sum(p.numel() for p in model.parameters()) > 0
    if expected is not None:
        assert tuple(_first(out).shape) == expected
    else:
        assert all(o.shape[0] == 1 for o in (out if isinstance(out, (list, tuple)) else [out]) if hasattr(o, "shape"))


def test_the_tuner_and_its_workers_never_import_torch():
    """The tuners' processes and their spawned workers (GI and 2D) hold OOF proxies, not models: importing
    torch (about 700 MB of resident libraries in each) raised the tuner's measured peak memory by 20 % once."""
    code = ("import sys, src.ensemble, src.ensembling.shards, src.ensembling.tune2d, src.ensembling.shards2d; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=SRC.parent)
    assert out.stdout.strip() == "False"

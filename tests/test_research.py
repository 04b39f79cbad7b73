"""Research tooling on a tiny synthetic dataset: the benchmark (with an OOM row), an ablation over
repeated splits (resumable), pruning sensitivity of a trained run (which stays untouched)."""
import ast
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.core.errors import DataError, run_cli
from src.data.folds import load_folds, make_folds
from src.data.preparation import prepare
from src.data.synthetic import generate
from src.data.volumes import VolumeCache

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("research")
    generate(root / "data", cases=4, seed=0, sizes=[(72, 64), (64, 64)], slices=[12, 10], workers=1)
    make_folds(root / "data", n_folds=2, seed=0).to_csv(root / "folds.csv", index=False)
    prepare(root / "data", root / "cache", workers=1)
    return root


def data_args(work):
    return ["--data-dir", str(work / "data"), "--cache-dir", str(work / "cache")]


def test_research_libraries_never_import_entry_points():
    entry = {p.stem for p in (ROOT / "src").glob("*.py")} - {"__init__"}
    for path in (ROOT / "src" / "research").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not (name.startswith("src.") and name.split(".")[1] in entry), f"{path.name} imports {name}"
    for entry_point in ("benchmark", "ablate", "prune"):
        assert (ROOT / "src" / f"{entry_point}.py").read_text().count("run_cli(main)") == 1


# ---- benchmark ---------------------------------------------------------------------------------------
def test_benchmark_measures_archs_and_reports_oom_as_a_row(work):
    out = work / "bench"
    cmd = [sys.executable, "-m", "src.benchmark", "models", "--archs", "unet_classic_tiny", "unet_classic",
           "--img-size", "64", "--batch-size", "2", "--repeats", "2", "--threads", "1", *data_args(work),
           "--memory-limit", "120", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_csv(out / "benchmark.csv").set_index("arch")
    assert list(table["status"]) == ["ok", "OOM"]  # the 31M-parameter net passes 120 MB; the run went on
    tiny = table.loc["unet_classic_tiny"]
    assert 0.05 < tiny["params_m"] < 0.5 and tiny["gmacs"] > 0
    assert tiny["train_ms"] > tiny["infer_ms"] * 2 > 0 and tiny["data_ms"] > 0 and 0 < tiny["peak_mb"] < 120
    assert table.loc["unet_classic", "peak_mb"] > 120
    assert "| unet_classic | OOM |" in (out / "benchmark.md").read_text()


def test_benchmark_prepares_its_cache_then_trains_and_scores_on_a_fold(work):
    from src.research.benchmark import BenchmarkOptions, run_benchmark

    opts = BenchmarkOptions(archs=("unet_classic_tiny",), img_size=64, batch_size=4, repeats=1, train_epochs=1,
                            data_dir=str(work / "data"), cache_dir=str(work / "cache_fresh"),
                            folds_csv=str(work / "folds.csv"), threads=1, out=str(work / "bench_train"))
    lines = []
    table = run_benchmark(opts, log=lines.append)
    assert "prepare: " in lines[0] and VolumeCache(work / "cache_fresh").case_days() == VolumeCache(work / "cache").case_days()
    row = table.iloc[0]
    assert row["status"] == "ok" and 0 <= row["val_score"] <= 1 and 0 <= row["val_dice"] <= 1 and row["train_s"] > 0


def test_benchmark_bad_flags_are_one_line_errors(work):
    from src.research.benchmark import BenchmarkOptions

    with pytest.raises(DataError, match="--archs: unknown arch 'unet_r19'"):
        BenchmarkOptions(archs=("unet_r19",))
    with pytest.raises(DataError, match="--device"):
        BenchmarkOptions(archs=("unet_tiny",), device="tpu")
    proc = subprocess.run([sys.executable, "-m", "src.benchmark", "models", "--archs", "unet_tiny", "--data-dir",
                           str(work / "nowhere")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("error: ") and "nowhere: data folder not found" in proc.stderr


# ---- pruning -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(work):
    from src.research.evaluation import train

    train(["--stage", "seg2d", "--arch", "unet_classic_tiny", "--fold", "0", *data_args(work), "--folds-csv",
           str(work / "folds.csv"), "--out", str(work / "runs"), "--name", "classic", "--img-size", "64",
           "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--workers", "0"])
    return work / "runs" / "classic"


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pruning_reaches_the_asked_sparsity_and_leaves_the_run_untouched(work, trained_run):
    from src.prune import main

    before = _tree_digest(trained_run)
    out = work / "prune_all"
    assert main(["--run", str(trained_run), "--amounts", "0.5", "--remove", "--threads", "1", "--out", str(out)]) == 0
    assert _tree_digest(trained_run) == before
    table = pd.read_csv(out / "prune.csv")
    assert list(table["module"]) == ["none", "all"] and table["sparsity"].iloc[0] < 0.01
    pruned = table.iloc[1]
    assert abs(pruned["sparsity"] - 0.5) < 0.01 and abs(pruned["model_sparsity"] - 0.5) < 0.01
    assert pruned["drop_score"] == pytest.approx(table["score"].iloc[0] - pruned["score"])
    assert pruned["checkpoint_gz_mb"] < table["checkpoint_gz_mb"].iloc[0]  # zeros compress
    assert (out / "prune_heatmap.png").stat().st_size > 1000


def test_pruning_per_module_rows_and_methods(work, trained_run):
    from src.research.pruning import PruneOptions, run_pruning

    for method in ("global_unstructured", "random_structured"):
        opts = PruneOptions(run=str(trained_run), method=method, amounts=(0.25, 0.75), per_module=True,
                            threads=1, out=str(work / f"prune_{method}"))
        table = run_pruning(opts, log=lambda *_: None)
        blocks = table[table["module"] != "none"]
        assert list(dict.fromkeys(blocks["module"])) == ["enc0", "enc1", "enc2", "bottleneck", "dec2", "dec1", "dec0", "head"]
        for amount in (0.25, 0.75):
            achieved = blocks.loc[blocks["amount"] == amount, "sparsity"]
            tolerance = 0.01 if method == "global_unstructured" else 0.2  # whole channels: rounded per layer
            assert (abs(achieved - amount) < tolerance).all(), (method, achieved.tolist())
            assert (blocks.loc[blocks["amount"] == amount, "model_sparsity"] < amount).all()  # one block only
        assert {"drop_score", "drop_dice_stomach", "dice_large_bowel"} <= set(table.columns)


def test_pruning_bad_flags(work, trained_run):
    from src.research.pruning import PruneOptions

    with pytest.raises(DataError, match="--method"):
        PruneOptions(run=str(trained_run), method="magnitude")
    with pytest.raises(DataError, match="--amounts"):
        PruneOptions(run=str(trained_run), amounts=(0.5, 1.5))
    with pytest.raises(DataError, match="--run"):
        PruneOptions(run=str(work / "runs" / "missing"))


# ---- ablation ------------------------------------------------------------------------------------------
def test_ablation_trains_every_cell_once_and_reports_paired_intervals(work):
    from src.research.ablation import AblationOptions, run_ablation

    base = ("--arch", "unet_classic_tiny", "--img-size", "64", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
            "--workers", "0", "--augment", "none", *data_args(work))
    opts = AblationOptions(base=base, vary=(("lr", ("1e-2",)),), repeats=2, split="random", out=str(work / "ablation"))
    lines = []
    summary = run_ablation(opts, log=lines.append)
    assert len(lines) == 4 and all("trained in" in line for line in lines)
    assert list(summary["variant"]) == ["base", "lr=1e-2"] and list(summary["n"]) == [2, 2]
    for column in ("score_mean", "score_std", "jaccard_mean", "dice_stomach_mean", "precision_small_bowel_std",
                   "recall_large_bowel_mean", "accuracy_stomach_mean", "d_score", "d_score_lo", "d_score_hi",
                   "d_jaccard", "beyond_noise"):
        assert column in summary.columns, column
    assert summary.loc[1, "d_score_lo"] <= summary.loc[1, "d_score"] <= summary.loc[1, "d_score_hi"]
    cells = pd.read_csv(work / "ablation" / "cells.csv")
    base_cells, varied = (cells[cells.variant == v].set_index("repeat") for v in ("base", "lr=1e-2"))
    assert summary.loc[1, "d_score"] == pytest.approx((varied["score"] - base_cells["score"]).mean())
    assert ((cells["accuracy_stomach"] > 0.5) & (cells["accuracy_stomach"] <= 1)).all()
    # the same two splits for both variants, 20 % of the case-days each, and two different splits
    splits = sorted((work / "ablation" / "splits").glob("*.csv"))
    folds = [load_folds(p) for p in splits]
    assert len(folds) == 2 and all((f["fold"] == 0).sum() == round(0.2 * len(f)) for f in folds)
    assert list(folds[0]["case_day"]) == list(folds[1]["case_day"]) and list(folds[0]["fold"]) != list(folds[1]["fold"])
    weights = {p: p.stat().st_mtime_ns for p in (work / "ablation" / "runs").rglob("best.pt")}
    assert len(weights) == 4
    again = []
    rerun = run_ablation(opts, log=again.append)
    assert len(again) == 4 and all("finished earlier" in line for line in again)
    assert {p: p.stat().st_mtime_ns for p in weights} == weights
    assert np.allclose(rerun["score_mean"], summary["score_mean"])
    assert (work / "ablation" / "ablation.png").stat().st_size > 1000
    assert "| lr=1e-2 | 2 |" in (work / "ablation" / "ablation.md").read_text()


def test_grouped_splits_keep_cases_whole_and_bad_flags_are_errors(work):
    from src.research.ablation import (
        AblationOptions,
        draw_split,
        paired_interval,
        parse_vary,
    )

    case_days = VolumeCache(work / "cache").case_days()
    for seed in range(3):
        val = draw_split(case_days, "grouped", 0.2, seed)
        val_cases = {cd.split("_")[0] for cd in val}
        assert val and all(cd in val for cd in case_days if cd.split("_")[0] in val_cases)
        assert len(val) < len(case_days)
    mean, lo, hi = paired_interval(np.array([0.1, 0.2, 0.3]), 0.95)
    assert mean == pytest.approx(0.2) and hi - mean == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-5)
    assert parse_vary("loss=bce:1,dice:1;tversky:1") == ("loss", ("bce:1,dice:1", "tversky:1"))
    with pytest.raises(DataError, match="--base: --fold is set by the ablation"):
        AblationOptions(base=("--fold", "1"))
    with pytest.raises(DataError, match="--vary: momentum is not a flag"):
        AblationOptions(base=(), vary=(("momentum", ("0.9",)),))
    assert AblationOptions(base=(), vary=(("optimizer", ("sgd",)),)).vary  # the optimizer is a train flag
    with pytest.raises(DataError, match="--repeats"):
        AblationOptions(base=(), repeats=1)


def test_ablate_flags_are_parsed_by_the_options_fields(capsys):
    """--base is split as a shell would and --vary (repeatable) is read by parse_vary as the flags are
    parsed (src.core.options: "parse", "append"); a bad value is one line and exit 2."""
    from src import ablate
    from src.core.options import from_args
    from src.research.ablation import AblationOptions

    def options(*argv: str) -> AblationOptions:
        return from_args(AblationOptions, ablate.build_parser().parse_args(list(argv)))

    opts = options("--base", "--lr 1e-3 --arch 'unet_classic_tiny'", "--vary", "lr=1e-2,1e-1",
                   "--vary", "loss=bce:1,dice:1;tversky:1", "--repeats", "2")
    assert opts.base == ("--lr", "1e-3", "--arch", "unet_classic_tiny") and opts.repeats == 2
    assert opts.vary == (("lr", ("1e-2", "1e-1")), ("loss", ("bce:1,dice:1", "tversky:1")))
    assert options("--base", "").vary == () and options("--base", "").out == "reports/ablation"
    for argv, line in ((["--base", "--arch 'x"], "error: --base: No closing quotation"),
                       (["--base", "--fold 1"], "error: --base: --fold is set by the ablation itself"),
                       (["--base", "", "--vary", "lr"], "error: --vary: expected name=v1,v2, got 'lr'"),
                       (["--base", "", "--vary", "lr="], "error: --vary: lr has no values")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            run_cli(ablate.main, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith(line), err

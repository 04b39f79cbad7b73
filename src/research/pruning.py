"""Pruning sensitivity of a trained 2.5D run: torch.nn.utils.prune per convolution block or on the whole
net, scored on the run's validation fold with the competition metric and per-class Dice.

The model is rebuilt from the fold's config.json and best.pt and every pruning works on a copy in
memory: nothing is written into the run. Blocks are the model's `conv_blocks()` where it has them (the
classic UNet: enc0.., bottleneck, dec.., head), else its Conv2d layers grouped by name prefix (up to
three parts, e.g. `encoder.layer1.0`, `decoder.blocks.2`). The pruned parameters are the weights of
every Conv2d and ConvTranspose2d in the block (or in the net):

- l1_unstructured / random_unstructured: that share of each layer's weights, by |w| or at random;
- random_structured: that share of each layer's output channels (dim 0), at random;
- global_unstructured: that share of all the targeted weights together, by |w| (L1), so layers lose
  different shares.

Random methods are seeded. Rows: the unpruned model (module `none`), then one per (module, amount)
with the achieved sparsity (of the targeted weights, and of all convolution weights), the score and
its drop from the unpruned model, per-class Dice and their drops; with `remove`, the size of the pruned
checkpoint (prune.remove makes the zeros permanent; raw and gzip-compressed bytes, since a dense
checkpoint of a pruned net only shrinks when compressed).
"""
from __future__ import annotations

import copy
import gzip
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from src.core.atomic import atomic_path
from src.core.errors import DataError
from src.data.layout import CLASSES
from src.inference.runs import TrainedFold, TrainedRun

METHODS = ("l1_unstructured", "random_unstructured", "random_structured", "global_unstructured")
CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)


@dataclass(frozen=True)
class PruneOptions:
    run: str = field(metadata={"help": "runs/NAME"})
    method: str = field(default="l1_unstructured", metadata={"help": " | ".join(METHODS)})
    amounts: tuple[float, ...] = (0.25, 0.5, 0.75)
    per_module: bool = field(default=False, metadata={"help": "prune each convolution block on its own"})
    remove: bool = field(default=False, metadata={
        "help": "make the pruning permanent and report the checkpoint size"})
    fold: str = field(default="", metadata={"help": "default: the first fold with validation case-days"})
    cache_dir: str = field(default="", metadata={"help": "default: the run config's"})
    out: str = field(default="", metadata={"help": "default: reports/prune_<run name>"})
    batch_size: int = 16
    seed: int = field(default=0, metadata={"help": "of the random methods"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads; 0 = torch's default"})

    def __post_init__(self):
        if not Path(self.run).is_dir():
            raise DataError(f"--run: {self.run} is not a run folder")
        if self.method not in METHODS:
            raise DataError(f"--method: {self.method!r} is not one of {', '.join(METHODS)}")
        if not self.amounts or any(not 0 < a < 1 for a in self.amounts):
            raise DataError(f"--amounts: every amount must be a fraction in (0, 1), got {list(self.amounts)}")
        if self.batch_size < 1 or self.threads < 0:
            raise DataError("--batch-size must be >= 1 and --threads >= 0")

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("reports") / f"prune_{Path(self.run).name}"


def conv_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> block of the model's convolutions (see the module doc)."""
    if hasattr(model, "conv_blocks"):
        return dict(model.conv_blocks())
    blocks: dict[str, list[nn.Module]] = {}
    for name, module in model.named_modules():
        if isinstance(module, CONV_TYPES):
            parts = name.split(".")
            key = ".".join(parts[:min(3, len(parts) - 1)]) or parts[0]
            blocks.setdefault(key, []).append(module)
    return {k: nn.ModuleList(v) for k, v in blocks.items()}


def targets(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, CONV_TYPES)]


def apply_pruning(modules: list[nn.Module], method: str, amount: float, seed: int = 0) -> None:
    torch.manual_seed(seed)
    if method == "global_unstructured":
        prune.global_unstructured([(m, "weight") for m in modules], pruning_method=prune.L1Unstructured, amount=amount)
        return
    for m in modules:
        if method == "l1_unstructured":
            prune.l1_unstructured(m, "weight", amount)
        elif method == "random_unstructured":
            prune.random_unstructured(m, "weight", amount)
        elif method == "random_structured":
            prune.random_structured(m, "weight", amount, dim=0)
        else:
            raise ValueError(f"unknown pruning method {method!r}")


def sparsity(modules: list[nn.Module]) -> float:
    """Share of zero weights over the modules' (effective, masked) weights."""
    zeros = sum(int((m.weight == 0).sum()) for m in modules)
    total = sum(m.weight.numel() for m in modules)
    return zeros / total if total else math.nan


def checkpoint_bytes(model: nn.Module) -> tuple[int, int]:
    """(raw, gzip) bytes of torch.save({"model": state_dict})."""
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict()}, buffer)
    raw = buffer.getvalue()
    return len(raw), len(gzip.compress(raw, compresslevel=6))


def _pick_fold(run: TrainedRun, fold: str) -> TrainedFold:
    """--fold, else the first fold with validation case-days."""
    if fold:
        return run.select([fold], "test")[0]
    found = next((f for f in run.folds.values() if f.val_case_days), None)
    if found is None:
        raise DataError(f"--run: {run.path} has no fold with validation case-days (a fold-all run cannot be scored)")
    return found


def _scores(model: nn.Module, cfg: dict, cache, case_days, batch_size: int) -> dict[str, float]:
    from src.research.evaluation import evaluate, fold_pairs

    result = evaluate(fold_pairs(model, cfg, cache, case_days, batch_size))
    return {"score": result["score"], **{f"dice_{c}": result[f"dice_{c}"] for c in CLASSES}}


def run_pruning(opts: PruneOptions, log=print) -> pd.DataFrame:
    """The sensitivity table (also <out>/prune.csv, prune.md) and <out>/prune_heatmap.png."""
    from src.data.volumes import VolumeCache
    from src.research.evaluation import load_fold_model, write_tables

    if opts.threads:
        torch.set_num_threads(opts.threads)
    run = TrainedRun.load(opts.run)
    fold = _pick_fold(run, opts.fold)
    model, cfg = load_fold_model(fold)
    case_days = list(fold.val_case_days)
    if not case_days:
        raise DataError(f"--fold: {fold.dir.path} has no validation case-days to score on")
    cache = VolumeCache(run.cache_dir(cache_dir=opts.cache_dir))
    all_convs = targets(model)
    base = _scores(model, cfg, cache, case_days, opts.batch_size)
    rows = [{"module": "none", "amount": 0.0, "method": opts.method, "sparsity": sparsity(all_convs),
             "model_sparsity": sparsity(all_convs), **base}]
    if opts.remove:
        rows[0]["checkpoint_mb"], rows[0]["checkpoint_gz_mb"] = (b / 2**20 for b in checkpoint_bytes(model))
    log(f"{fold.dir.path}: unpruned score {base['score']:.4f} on {len(case_days)} validation case-days")
    names = list(conv_blocks(model)) if opts.per_module else ["all"]
    for name in names:
        for amount in opts.amounts:
            start = time.perf_counter()
            pruned = copy.deepcopy(model)
            chosen = targets(pruned) if name == "all" else targets(conv_blocks(pruned)[name])
            apply_pruning(chosen, opts.method, amount, opts.seed)
            scores = _scores(pruned.eval(), cfg, cache, case_days, opts.batch_size)
            row = {"module": name, "amount": amount, "method": opts.method, "sparsity": sparsity(chosen),
                   "model_sparsity": sparsity(targets(pruned)), **scores}
            if opts.remove:
                for m in chosen:
                    prune.remove(m, "weight")
                row["checkpoint_mb"], row["checkpoint_gz_mb"] = (b / 2**20 for b in checkpoint_bytes(pruned))
            rows.append(row)
            log(f"  {name} @ {amount:.2f}: sparsity {row['sparsity']:.3f}, score {scores['score']:.4f} "
                f"({time.perf_counter() - start:.1f} s)")
    table = pd.DataFrame(rows)
    table.insert(table.columns.get_loc("score") + 1, "drop_score", base["score"] - table["score"])
    for c in CLASSES:
        table[f"drop_dice_{c}"] = base[f"dice_{c}"] - table[f"dice_{c}"]
    out = opts.out_dir
    md = table[["module", "amount", "sparsity", "score", "drop_score", *[f"drop_dice_{c}" for c in CLASSES]]
               + (["checkpoint_mb", "checkpoint_gz_mb"] if opts.remove else [])]
    write_tables(table, out / "prune.csv", out / "prune.md", md_table=md)
    heatmap(table[table["module"] != "none"], out / "prune_heatmap.png", f"{Path(opts.run).name}: {opts.method}")
    return table


def heatmap(table: pd.DataFrame, path: Path, title: str) -> None:
    """Drop of the score and of each class's Dice, module x amount, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modules = list(dict.fromkeys(table["module"]))
    amounts = sorted(set(table["amount"]))
    panels = [("drop_score", "score")] + [(f"drop_dice_{c}", f"Dice {c}") for c in CLASSES]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1, 0.45 * len(modules) + 2), squeeze=False)
    values = table.pivot_table(index="module", columns="amount", values=[p for p, _ in panels], aggfunc="first")
    limit = max(1e-6, float(np.nanmax(np.abs(values.to_numpy()))))
    for ax, (column, label) in zip(axes[0], panels):
        grid = values[column].reindex(index=modules, columns=amounts).to_numpy(dtype=float)
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_xticks(range(len(amounts)), [f"{a:.0%}" for a in amounts])
        ax.set_yticks(range(len(modules)), modules if ax is axes[0][0] else [""] * len(modules))
        ax.set_title(f"drop of {label}", fontsize=9)
        ax.set_xlabel("amount pruned")
        for (i, j), v in np.ndenumerate(grid):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if abs(v) > 0.6 * limit else "black")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="unpruned - pruned")
    fig.suptitle(title, fontsize=10)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)

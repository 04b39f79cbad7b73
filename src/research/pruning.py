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

On a run trained on 2D images (its cache's description says dims "2d") the fold model is rebuilt by the
seg2d stage's task for that cache (src.inference.fold_model.FoldModel: input channels and classes from
the description), each validation image is predicted at its own size (task.predict_volume), turned into
an index map at the run's --threshold (src.data.image_samples.label_map) and scored with the dataset's
metric (src.metrics.overlap): `score` is the mean over images of the per-image Dice (the run's
val_score), `jaccard` the same mean of the per-image Jaccard (with `drop_jaccard`), and `dice_<label>`
the mean per-image Dice of each of the description's classes (with `drop_dice_<label>`, one heatmap
panel each). The GI columns comp_dice / hausdorff have no 2D meaning and are not there; --batch-size
does not apply (one image at a time, at its own size).
"""
from __future__ import annotations

import copy
import gzip
import io
import math
import time
from collections.abc import Callable
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


@dataclass
class Scorer:
    """A fold's model and how to score a (pruned) copy of it: `score(model)` -> {"score", extra metrics,
    "dice_<class>"}; `classes` names the per-class Dice columns, `extra` the other metrics with a drop."""

    model: nn.Module
    score: Callable[[nn.Module], dict[str, float]]
    classes: tuple[str, ...]
    extra: tuple[str, ...]
    what: str  # what was scored, for the log: "N validation case-days" / "N validation images"


def _volume_scorer(fold: TrainedFold, cache_dir: Path, keys: list[str], batch_size: int) -> Scorer:
    from src.data.volumes import VolumeCache
    from src.research.evaluation import load_fold_model

    model, cfg = load_fold_model(fold)
    cache = VolumeCache(cache_dir)
    return Scorer(model, lambda m: _scores(m, cfg, cache, keys, batch_size), tuple(CLASSES), (),
                  f"{len(keys)} validation case-days")


def _image_scorer(fold: TrainedFold, cache_dir: Path, keys: list[str]) -> Scorer:
    """2D images: the fold model through the seg2d task for the cache (channels and classes from the
    description), each validation image predicted at its size (task.predict_volume), thresholded at the
    run's threshold (label_map) and scored with src.metrics.overlap."""
    from src.data.image_samples import ImageInput, label_map
    from src.inference.fold_model import FoldModel
    from src.metrics.overlap import image_means, image_table

    if fold.stage != "seg2d":
        raise DataError(f"{fold.dir.config_path}: stage {fold.stage!r}; only seg2d runs can be studied")
    loaded = FoldModel.load(fold, torch.device("cpu"), cache_dir)
    task = loaded.task
    labels = tuple(task.description.labels)
    strata = task.entries["stratum"]
    inputs = [ImageInput.of(key, *task.cache.load(key)) for key in keys]  # memory-mapped

    @torch.no_grad()
    def score(model: nn.Module) -> dict[str, float]:
        maps = ((entry.name, strata.get(entry.name), label_map(task.predict_volume(model, entry, torch.device("cpu")),
                                                                task.cfg.threshold), np.asarray(entry.mask))
                for entry in inputs)
        per_class = image_table(maps, labels)
        per_image = image_means(per_class)
        return {"score": float(per_image["dice"].mean()), "jaccard": float(per_image["jaccard"].mean()),
                **{f"dice_{name}": float(per_class.loc[per_class["class"] == name, "dice"].mean()) for name in labels}}

    return Scorer(loaded.model, score, labels, ("jaccard",), f"{len(keys)} validation images")


def run_pruning(opts: PruneOptions, log=print) -> pd.DataFrame:
    """The sensitivity table (also <out>/prune.csv, prune.md) and <out>/prune_heatmap.png."""
    from src.data.image_cache import is_image_cache
    from src.research.evaluation import write_tables

    if opts.threads:
        torch.set_num_threads(opts.threads)
    run = TrainedRun.load(opts.run)
    fold = _pick_fold(run, opts.fold)
    case_days = list(fold.val_case_days)
    if not case_days:
        raise DataError(f"--fold: {fold.dir.path} has no validation case-days to score on")
    cache_dir = run.cache_dir(cache_dir=opts.cache_dir)
    scorer = (_image_scorer(fold, cache_dir, case_days) if is_image_cache(cache_dir)
              else _volume_scorer(fold, cache_dir, case_days, opts.batch_size))
    model, classes = scorer.model, scorer.classes
    all_convs = targets(model)
    base = scorer.score(model)
    rows = [{"module": "none", "amount": 0.0, "method": opts.method, "sparsity": sparsity(all_convs),
             "model_sparsity": sparsity(all_convs), **base}]
    if opts.remove:
        rows[0]["checkpoint_mb"], rows[0]["checkpoint_gz_mb"] = (b / 2**20 for b in checkpoint_bytes(model))
    log(f"{fold.dir.path}: unpruned score {base['score']:.4f} on {scorer.what}")
    names = list(conv_blocks(model)) if opts.per_module else ["all"]
    for name in names:
        for amount in opts.amounts:
            start = time.perf_counter()
            pruned = copy.deepcopy(model)
            chosen = targets(pruned) if name == "all" else targets(conv_blocks(pruned)[name])
            apply_pruning(chosen, opts.method, amount, opts.seed)
            scores = scorer.score(pruned.eval())
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
    for metric in scorer.extra:
        table.insert(table.columns.get_loc(metric) + 1, f"drop_{metric}", base[metric] - table[metric])
    for c in classes:
        table[f"drop_dice_{c}"] = base[f"dice_{c}"] - table[f"dice_{c}"]
    out = opts.out_dir
    md = table[["module", "amount", "sparsity", "score", "drop_score", *[f"drop_{m}" for m in scorer.extra],
                *[f"drop_dice_{c}" for c in classes]] + (["checkpoint_mb", "checkpoint_gz_mb"] if opts.remove else [])]
    write_tables(table, out / "prune.csv", out / "prune.md", md_table=md)
    heatmap(table[table["module"] != "none"], out / "prune_heatmap.png", f"{Path(opts.run).name}: {opts.method}",
            classes)
    return table


def heatmap(table: pd.DataFrame, path: Path, title: str, classes: tuple[str, ...] = tuple(CLASSES)) -> None:
    """Drop of the score and of each class's Dice, module x amount, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modules = list(dict.fromkeys(table["module"]))
    amounts = sorted(set(table["amount"]))
    panels = [("drop_score", "score")] + [(f"drop_dice_{c}", f"Dice {c}") for c in classes]
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

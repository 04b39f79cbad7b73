"""Figures of the run report: each function draws one matplotlib figure (Agg canvas) into a PNG.

Figures are built on `matplotlib.figure.Figure` with an Agg canvas, not through pyplot, so no global
backend or figure registry is touched.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from src.metrics.competition import DICE_WEIGHT, HAUSDORFF_WEIGHT

PALETTE = ("#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#bf5af2", "#ff9f0a", "#64d2ff", "#ff375f")  # legible on
# a grey MRI slice and on most photographs; the GI classes take the first three
DPI = 100


def class_colours(labels) -> dict[str, str]:
    """A contour and bar colour per class name, in order (the palette repeats past its length)."""
    return {name: PALETTE[k % len(PALETTE)] for k, name in enumerate(labels)}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, format="png")


def training_curves(logs: dict[str, pd.DataFrame], path: Path) -> None:
    """train_loss and every val_* column per epoch, one line per fold (through the validated epochs
    only, with --val-every)."""
    columns = ["train_loss"] + sorted({c for log in logs.values() for c in log.columns if c.startswith("val_")})
    ncols = min(len(columns), 4)
    nrows = math.ceil(len(columns) / ncols)
    fig = _figure(3.6 * ncols, 2.8 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    epochs = {fold: log["epoch"] + 1 if "epoch" in log else np.arange(1, len(log) + 1) for fold, log in logs.items()}
    last = max(max(e, default=1) for e in epochs.values())
    for ax, column in zip(axes, columns):
        for fold, log in logs.items():
            if column in log:
                known = log[column].notna().to_numpy()
                ax.plot(np.asarray(epochs[fold])[known], log[column][known], marker="o", markersize=3,
                        label=f"fold {fold}")
        ax.set(title=column, xlabel="epoch", xlim=(0.5, last + 0.5))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    labelled = next((ax for ax in axes if ax.lines), None)  # a detector's log has no train_loss
    if labelled is not None:
        labelled.legend(fontsize="small")
    for ax in axes[len(columns):]:
        ax.set_axis_off()
    _save(fig, path)


def case_day_scores(table: pd.DataFrame, path: Path) -> None:
    """Stacked horizontal bars per case-day (table order, top first): the Dice and Hausdorff parts."""
    dice_part = DICE_WEIGHT * table["dice"].fillna(1.0)
    hausdorff_part = HAUSDORFF_WEIGHT * (1.0 - table["hausdorff"].fillna(0.0))
    fig = _figure(8, 1.2 + 0.22 * len(table))
    ax = fig.subplots()
    y = np.arange(len(table))
    ax.barh(y, dice_part, color="#4c72b0", label=f"{DICE_WEIGHT} x Dice")
    ax.barh(y, hausdorff_part, left=dice_part, color="#dd8452", label=f"{HAUSDORFF_WEIGHT} x (1 - Hausdorff)")
    ax.set_yticks(y, table["case_day"], fontsize="small")
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="score per case-day")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside upper center", ncols=2, fontsize="small")
    _save(fig, path)


def class_dice(values: pd.Series, path: Path) -> None:
    """One bar per class (the series' index: the class names, in order): the mean Dice over its rows (the
    series' name, if any, says how it is averaged)."""
    fig = _figure(max(5.0, 0.9 * len(values) + 1.5), 3)
    ax = fig.subplots()
    colours = class_colours(values.index)
    bars = ax.bar(values.index, values.fillna(0.0), color=[colours[c] for c in values.index])
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize="small")
    ax.set(ylim=(0, 1.1), ylabel=values.name or "Dice (nanmean over rows)")
    _save(fig, path)


def _legend_handles(labels) -> list:
    classes = [Patch(color=colour, label=name) for name, colour in class_colours(labels).items()]
    return classes + [Line2D([], [], color="white", linestyle="-", label="truth"),
                      Line2D([], [], color="white", linestyle="--", label="prediction")]


def overlays(title: str, labels, panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], path: Path) -> None:
    """One panel per (caption, image (H, W) gray or (H, W, 3) RGB in [0, 1], truth (K, H, W), pred (K, H, W)):
    contours per class of `labels` (K names), truth solid, prediction dashed."""
    fig = _figure(3.4 * len(panels), 3.8)
    fig.set_facecolor("#222222")
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)).ravel()
    colours = list(class_colours(labels).values())
    for ax, (caption, image, truth, pred) in zip(axes, panels):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        for c, colour in enumerate(colours):
            for mask, style in ((truth[c], "solid"), (pred[c], "dashed")):
                if mask.any():
                    ax.contour(mask.astype(np.uint8), levels=[0.5], colors=[colour], linestyles=style, linewidths=1.2)
        ax.set_title(caption, color="white", fontsize="small")
        ax.set_axis_off()
    fig.suptitle(title, color="white")
    legend = fig.legend(handles=_legend_handles(labels), loc="outside lower center", ncols=min(len(labels) + 2, 6),
                        fontsize="small", facecolor="#222222", edgecolor="#555555")
    for text in legend.get_texts():
        text.set_color("white")
    _save(fig, path)

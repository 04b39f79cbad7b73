"""The tables of an ensemble file: its scores, its held-out contributions and its parameters. A GI file's
scores hold score/dice/hausdorff, a 2D file's ("dims": "2d") score/dice/jaccard, in the same layout."""
from __future__ import annotations

import json

import pandas as pd

from src.ensembling import choice, contributions

METRIC_KEYS = ("score", "dice", "hausdorff")
IMAGE_METRIC_KEYS = ("score", "dice", "jaccard")  # a 2D ensemble file's
CONTRIBUTION_COLUMNS = {"component": "component", "score": "held-out score without it",
                        "delta": "delta (what it wins)", "note": "note"}


def ensemble_tables(record: dict, metric_keys: tuple[str, ...] = METRIC_KEYS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """From ensemble.json's "scores", whatever keys it has but those with tables of their own:
    (one row per entry holding any of `metric_keys`, named by its key path, those columns first),
    (every other scalar as name, value)."""
    metric_rows, other_rows = [], []

    def walk(name: str, value) -> None:
        if isinstance(value, dict) and any(k in value for k in metric_keys):
            metric_rows.append({"name": name, **{k: v for k, v in value.items() if not isinstance(v, (dict, list))}})
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{name} / {key}" if name else str(key), item)
        else:
            other_rows.append({"name": name, "value": value})

    scores = record.get("scores", {})
    own_tables = (contributions.KEY, choice.KEY)  # contribution_table, choice_table
    walk("", {k: v for k, v in scores.items() if k not in own_tables} if isinstance(scores, dict) else scores)
    metrics = pd.DataFrame(metric_rows)
    if not metrics.empty:
        first = ["name"] + [k for k in metric_keys if k in metrics]
        metrics = metrics[first + [c for c in metrics if c not in first]]
    return metrics, pd.DataFrame(other_rows, columns=["name", "value"])


def contribution_table(record: dict) -> pd.DataFrame:
    """ensemble.json's contribution rows (src.ensembling.contributions), empty when it has none."""
    scores = record.get("scores")
    rows = scores.get(contributions.KEY) if isinstance(scores, dict) else None
    rows = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    table = pd.DataFrame([[r.get(k) for k in CONTRIBUTION_COLUMNS] for r in rows],
                         columns=list(CONTRIBUTION_COLUMNS.values()))
    numbers = [CONTRIBUTION_COLUMNS[k] for k in ("score", "delta")]
    table[numbers] = table[numbers].apply(pd.to_numeric, errors="coerce").astype(float)  # None: an empty cell
    return table


CHOICE_COLUMNS = {"score": "held-out score", "low": "95% low", "high": "95% high", "delta": "vs written",
                  "delta_low": "vs written, 95% low", "delta_high": "vs written, 95% high"}


def choice_table(record: dict) -> tuple[pd.DataFrame, str] | None:
    """ensemble.json's final choice (src.ensembling.choice): one row per candidate, the written one
    marked, and the sentence saying what the intervals are (over case-days, or the images of a 2D
    file); None when the file has none."""
    scores = record.get("scores")
    made = scores.get(choice.KEY) if isinstance(scores, dict) else None
    if not isinstance(made, dict) or not isinstance(made.get("candidates"), dict):
        return None
    rows = [{"candidate": name, **{label: row.get(key) for key, label in CHOICE_COLUMNS.items()},
             "written": "yes" if name == made.get("written") else ""}
            for name, row in made["candidates"].items() if isinstance(row, dict)]
    table = pd.DataFrame(rows, columns=["candidate", *CHOICE_COLUMNS.values(), "written"])
    numbers = list(CHOICE_COLUMNS.values())
    table[numbers] = table[numbers].apply(pd.to_numeric, errors="coerce").astype(float)
    unit = "images" if "images" in made else "case-days"  # a 2D ensemble's choice is over images
    return table, f"{made.get(unit.replace('-', '_'))} {unit}; {made.get('interval')}"


def params_table(record: dict) -> pd.DataFrame | None:
    """ensemble.json's parameters as (parameter, JSON value); None when it has no params block."""
    params = record.get("params")
    if not isinstance(params, dict):
        return None
    return pd.DataFrame([(k, json.dumps(v)) for k, v in params.items()], columns=["parameter", "value"])


def oof_note(record: dict) -> str | None:
    """What a 2D ensemble file says of the OOF it was tuned on ("oof": images, folds, metric, cache), as
    one sentence; None without it."""
    oof = record.get("oof")
    if not isinstance(oof, dict):
        return None
    folds = oof.get("folds")
    folds = ", ".join(str(f) for f in folds) if isinstance(folds, list) else folds
    return (f"Tuned on the out-of-fold predictions of {oof.get('images', '?')} images (folds {folds or '?'}), "
            f"metric {oof.get('metric', '?')}, cache {oof.get('cache_dir', '?')}.")

"""What each part of a tuned ensemble wins: the held-out score with that part removed.

A component's ablation maps EnsembleParams to the same parameters without it:

- `model NAME`: its weights 0 in every class; the other models renormalise (where it was the last of
  its blend group with weight in a class, the other group takes that class whole);
- `2.5D/3D fusion` (only when both blend groups exist): 0.5 in every class, the plain mean's;
- `gate`: gate_threshold and gate_pixels 0 (off);
- `crop` (only with a detector): off;
- `thresholds`: 0.5 in every class;
- `min component size`: 0 in every class;
- `z clean-up`: z_min_run 0 and z_largest off in every class.

A 2D ensemble's (ImageEnsembleParams) components are its models, `thresholds` (0.5), `gate`
(gate_threshold 0), `min component size` (min_area 0) and `hole filling` (off).

`ablations` applies each to every fold's parameters of the held-out estimate: a component that
changes no fold's parameters is "not used" and not scored, a model whose removal leaves a class
with no weight is skipped with the reason; the tuner scores the rest exactly, in the pass that
scores the held-out estimate, and `rows` turns their scores into the ensemble record's rows.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from src.ensembling.params import GROUPS, EnsembleParams, effective_weights
from src.ensembling.params2d import ImageEnsembleParams

KEY = "contributions"  # under the ensemble record's "scores"
NOT_USED = "not used"
SKIPPED = "skipped"
TITLE = "held-out contribution (score lost without it)"

Params = EnsembleParams | ImageEnsembleParams
Ablate = Callable[[Params], Params]


def without_model(name: str) -> Ablate:
    """The ablation of a model: its weights 0, the others renormalised (EnsembleParams.without_model)."""
    return lambda params: params.without_model(name)


def reset(**values) -> Ablate:
    """The ablation setting every class of the named fields to its value."""
    return lambda params: dataclasses.replace(params, **{k: (v,) * len(params.thresholds) for k, v in values.items()})


def components(params: Params, crop: bool) -> dict[str, tuple[Ablate, str]]:
    """component -> (its ablation, what the ablation does), in the order post-processing applies them;
    the fusion only when both blend groups exist, the crop only with a detector (`crop`)."""
    out = {f"model {name}": (without_model(name), "weights 0, the rest renormalised") for name in params.weights}
    if isinstance(params, ImageEnsembleParams):
        out["thresholds"] = (reset(thresholds=0.5), "thresholds 0.5")
        out["gate"] = (reset(gate_threshold=0.0), "gate off")
        out["min component size"] = (reset(min_area=0.0), "min area 0")
        out["hole filling"] = (reset(fill_holes=False), "no hole filling")
        return out
    if set(params.groups.values()) == set(GROUPS):
        out["2.5D/3D fusion"] = (reset(fusion=0.5), "fusion 0.5")
    out["thresholds"] = (reset(thresholds=0.5), "thresholds 0.5")
    out["gate"] = (reset(gate_threshold=0.0, gate_pixels=0), "gate off")
    if crop:
        out["crop"] = (lambda p: dataclasses.replace(p, crop=False), "crop off")
    out["min component size"] = (reset(min_size=0), "min size 0")
    out["z clean-up"] = (reset(z_min_run=0, z_largest=False), "no z clean-up")
    return out


@dataclass(frozen=True)
class Ablation:
    """One component removed from every fold's parameters; `params` None when it is not scored."""

    component: str
    params: dict[int, Params] | None
    note: str


def _nothing_left(by_fold: dict[int, Params]) -> str | None:
    """Why the parameters cannot blend (a class with no weight left), or None."""
    for fold, params in by_fold.items():
        try:
            if isinstance(params, ImageEnsembleParams):
                params.weight_matrix()
            else:
                effective_weights(params, list(params.weights))
        except ValueError as exc:
            return f"{SKIPPED}: nothing left in fold {fold} ({exc})"
    return None


def ablations(by_fold: dict[int, Params], crop: bool = False) -> list[Ablation]:
    """Every component of the held-out estimate's per-fold parameters, removed in turn."""
    out = []
    for component, (ablate, what) in components(next(iter(by_fold.values())), crop).items():
        ablated = {fold: ablate(params) for fold, params in by_fold.items()}
        if ablated == by_fold:
            out.append(Ablation(component, None, NOT_USED))
        elif reason := _nothing_left(ablated):
            out.append(Ablation(component, None, reason))
        else:
            out.append(Ablation(component, ablated, what))
    return out


def rows(ablated: list[Ablation], held_out: float | None, scores: list[float | None]) -> list[dict]:
    """The record's rows: component, its held-out score without it (`scores`, one per scored
    ablation in order; None when not scored), delta = held_out - score (what it wins), note."""
    left = iter(scores)
    out = []
    for a in ablated:
        score = next(left) if a.params is not None else None
        delta = None if score is None or held_out is None else round(held_out - score, 6)
        out.append({"component": a.component, "score": score, "delta": delta, "note": a.note})
    return out


def table(recorded: list[dict]) -> str:
    """The record's rows as aligned text: component, score without it, delta, note."""
    width = max(len(TITLE), *(len(r["component"]) for r in recorded)) + 2
    fmt = lambda v, sign="": "-" if v is None else f"{v:{sign}.4f}"  # noqa: E731
    lines = [f"{TITLE:<{width}}{'without it':>12}{'delta':>9}  note"]
    lines += [f"{r['component']:<{width}}{fmt(r['score']):>12}{fmt(r['delta'], '+'):>9}  {r['note']}"
              for r in recorded]
    return "\n".join(lines)


def in_a_word(row: dict) -> str:
    """A recorded row as one cell: its delta (signed), "not used", "skipped" or "-" (no score)."""
    note = str(row.get("note"))
    if row.get("delta") is not None:
        return f"{row['delta']:+.4f}"
    return note if note == NOT_USED else SKIPPED if note.startswith(SKIPPED) else "-"

"""The contribution table: each ablation on hand-made parameters, the tuner's exact held-out scores
without each component (on the fake runs of test_ensemble), the report's table and the pipeline's."""
import dataclasses
import json
import re

import numpy as np
import pytest
from test_ensemble import fake  # noqa: F401  (fixture)

import src.ensembling.tune as tune_module
import src.orchestration.recipes as recipes
from src.core.artifacts import write_ensemble
from src.ensembling import contributions
from src.ensembling.contributions import NOT_USED, ablations, components, without_model
from src.ensembling.ensemble_file import load_ensemble
from src.ensembling.params import EnsembleParams, effective_weights
from src.ensembling.postprocess import apply_ensemble
from src.ensembling.tune import TuneOptions, tune
from src.metrics.competition import score_volumes
from src.reporting.ensemble import contribution_table, ensemble_tables

GROUPS3 = {"a": "2d", "b": "2d", "c": "3d"}
# every field away from its neutral value, so an ablation that resets too much shows
TUNED = EnsembleParams(weights={"a": (1, 2, 0.5), "b": (0, 1, 1), "c": (2, 1, 1)}, groups=GROUPS3,
                       fusion=(0.0, 0.35, 0.8), thresholds=(0.4, 0.55, 0.6), gate_threshold=(0.3, 0, 0.5),
                       gate_pixels=(0, 12, 0), gate_prob=(0.5, 0.6, 0.5), min_size=(0, 40, 9),
                       z_min_run=(2, 0, 0), z_largest=(False, True, False), crop=True)
RESETS = {"2.5D/3D fusion": {"fusion"}, "thresholds": {"thresholds"}, "gate": {"gate_threshold", "gate_pixels"},
          "crop": {"crop"}, "min component size": {"min_size"}, "z clean-up": {"z_min_run", "z_largest"}}


def changed(before: EnsembleParams, after: EnsembleParams) -> set[str]:
    return {f.name for f in dataclasses.fields(before) if getattr(before, f.name) != getattr(after, f.name)}


# ---- ablations ---------------------------------------------------------------------------------
def test_each_reset_sets_its_fields_to_the_plain_mean_and_nothing_else():
    plain = EnsembleParams.plain_mean(GROUPS3)
    found = components(TUNED, crop=True)
    assert list(found) == ["model a", "model b", "model c", *RESETS]  # post-processing's order
    for component, fields in RESETS.items():
        ablated = found[component][0](TUNED)
        assert changed(TUNED, ablated) == fields, component
        for name in fields:
            assert getattr(ablated, name) == getattr(plain, name), (component, name)


def test_fusion_only_with_both_groups_and_crop_only_with_a_detector():
    two_d = EnsembleParams.plain_mean({"a": "2d", "b": "2d"})
    assert list(components(two_d, crop=False)) == ["model a", "model b", "thresholds", "gate",
                                                  "min component size", "z clean-up"]
    assert "crop" in components(two_d, crop=True) and "2.5D/3D fusion" in components(TUNED, crop=False)


def test_a_removed_model_leaves_the_rest_renormalised():
    ablated = without_model("b")(TUNED)
    assert ablated.weights == {**TUNED.weights, "b": (0.0, 0.0, 0.0)} and changed(TUNED, ablated) == {"weights"}
    rest = EnsembleParams(weights={"a": TUNED.weights["a"], "c": TUNED.weights["c"]}, groups={"a": "2d", "c": "3d"},
                          fusion=TUNED.fusion)
    np.testing.assert_allclose(effective_weights(ablated, ["a", "c"]), effective_weights(rest, ["a", "c"]))
    assert np.allclose(effective_weights(ablated, ["a", "b", "c"])[1], 0)


def test_the_last_model_of_a_group_hands_its_class_to_the_other_group():
    """Class 0: a is the only 2.5D model with weight and the fusion gives the 3D group nothing; without
    a, the 3D model takes class 0 whole (and only there is the fusion changed)."""
    ablated = without_model("a")(TUNED)
    assert ablated.fusion == (1.0, 0.35, 0.8) and changed(TUNED, ablated) == {"weights", "fusion"}
    assert ablated.weights == {**TUNED.weights, "a": (0.0, 0.0, 0.0)}
    np.testing.assert_allclose(effective_weights(ablated, ["a", "b", "c"]), [[0, 0, 0], [0, 0.65, 0.2], [1, 0.35, 0.8]])


def test_unused_components_are_not_scored_and_a_sole_model_is_skipped():
    """Fold 0 uses a min size and fold 1 none: scored in both folds. Crop, gate and z clean-up are off,
    fusion 0.5, thresholds 0.5 in every fold: not used. Model a is class 0's only model in fold 1."""
    base = EnsembleParams(weights={"a": (1, 1, 1), "b": (1, 1, 1)}, groups={"a": "2d", "b": "3d"})
    by_fold = {0: base.replace_class("min_size", 2, 30), 1: base.replace_weight("b", 0, 0.0)}
    rows = {a.component: a for a in ablations(by_fold, crop=True)}
    assert list(rows) == ["model a", "model b", "2.5D/3D fusion", "thresholds", "gate", "crop",
                          "min component size", "z clean-up"]
    for name in ("2.5D/3D fusion", "thresholds", "gate", "crop", "z clean-up"):
        assert rows[name].params is None and rows[name].note == NOT_USED
    assert rows["min component size"].params == {0: base, 1: by_fold[1]}
    assert rows["model a"].params is None
    assert rows["model a"].note == "skipped: nothing left in fold 1 (no model has weight for class large_bowel)"
    assert rows["model b"].params == {f: without_model("b")(p) for f, p in by_fold.items()}


def test_rows_pair_scores_with_the_scored_ablations():
    by_fold = {0: TUNED, 1: TUNED}
    ablated = ablations(by_fold, crop=True)
    scored = [a for a in ablated if a.params]
    rows = contributions.rows(ablated, 0.8, [0.7 + i / 100 for i in range(len(scored))])
    assert [r["component"] for r in rows] == [a.component for a in ablated]
    assert [r["score"] for r in rows if r["score"] is not None] == [0.7 + i / 100 for i in range(len(scored))]
    for row in rows:
        assert row["delta"] == (None if row["score"] is None else round(0.8 - row["score"], 6))
    text = contributions.table(rows)
    assert text.splitlines()[0].startswith(contributions.TITLE) and len(text.splitlines()) == len(rows) + 1


# ---- the tuner ---------------------------------------------------------------------------------
def _case_days(root, runs):
    """(case_day, probabilities of sharp/soft/vol, classifier presence, detector box, truth)."""
    for cd in sorted({p.stem for p in runs["sharp"].glob("fold*/oof/*.npy")}):
        probs = {n: np.load(next(runs[n].glob(f"fold*/oof/{cd}.npy"))) for n in ("sharp", "soft", "vol")}
        gate = np.load(next(runs["cls"].glob(f"fold*/oof/{cd}.npy")))
        box = json.loads(next(runs["det"].glob(f"fold*/oof/{cd}.json")).read_text())["box"]
        yield cd, probs, gate, box, np.load(root / "cache" / "train" / cd / "mask.npy") > 0


def test_tuner_records_the_exact_held_out_score_without_each_component(fake, tmp_path, monkeypatch, capsys):  # noqa: F811
    root, runs, folds = fake
    cross = tune_module.cross_tune
    seen = {}
    monkeypatch.setattr(tune_module, "cross_tune", lambda *a, **k: seen.setdefault("by_fold", cross(*a, **k)))
    out = tmp_path / "e.json"
    record = tune(TuneOptions(runs=[runs["sharp"], runs["soft"], runs["vol"]], gate=runs["cls"], crop=runs["det"],
                              out=out, cache_dir=root / "cache", passes=1))
    log = capsys.readouterr().out
    assert log.index("tuned ensemble, held-out") < log.index(contributions.TITLE)
    rows = {r["component"]: r for r in record["scores"][contributions.KEY]}
    assert list(rows) == ["model sharp", "model soft", "model vol", "2.5D/3D fusion", "thresholds", "gate", "crop",
                          "min component size", "z clean-up"]
    assert load_ensemble(out).record["scores"][contributions.KEY] == list(rows.values())
    held_out = record["scores"]["tuned_held_out"]["score"]
    by_fold, cases = seen["by_fold"], list(_case_days(root, runs))
    ablated = {a.component: a.params for a in ablations(by_fold, crop=True)}
    ablated["thresholds (by hand)"] = {f: dataclasses.replace(p, thresholds=(0.5,) * 3) for f, p in by_fold.items()}
    scored = 0
    for component, params in ablated.items():
        row = rows[component.removesuffix(" (by hand)")]
        if params is None:  # unused in every fold, or the only model left (forward selection keeps few)
            assert row["score"] is None and row["delta"] is None
            assert row["note"] == NOT_USED or row["note"].startswith(contributions.SKIPPED)
            continue
        exact = score_volumes((cd, apply_ensemble(p, g, params[folds[cd]], b), t) for cd, p, g, b, t in cases)
        assert row["score"] == pytest.approx(exact.score, abs=1e-6), component
        assert row["delta"] == pytest.approx(held_out - row["score"], abs=1e-6)
        scored += 1
    assert scored >= 3 and any(r["delta"] is not None and r["delta"] > 0 for r in rows.values())


def test_no_held_out_estimate_no_table_and_a_lone_model_is_skipped(fake, tmp_path):  # noqa: F811
    root, runs, _ = fake
    options = dict(runs=[runs["sharp"]], out=tmp_path / "e.json", cache_dir=root / "cache", passes=0)
    record = tune(TuneOptions(**options, holdout_folds=()), log=lambda line: None)
    assert "tuned_held_out" not in record["scores"] and contributions.KEY not in record["scores"]
    rows = tune(TuneOptions(**options), log=lambda line: None)["scores"][contributions.KEY]
    assert rows[0]["component"] == "model sharp" and rows[0]["note"].startswith("skipped: nothing left")
    assert all(r["score"] is None and r["note"] == NOT_USED for r in rows[1:])  # the plain mean uses nothing else


# ---- report and pipeline -----------------------------------------------------------------------
RECORDED = [{"component": "model a", "score": 0.7, "delta": 0.1, "note": "weights 0, the rest renormalised"},
            {"component": "crop", "score": None, "delta": None, "note": NOT_USED},
            {"component": "model b", "score": None, "delta": None, "note": "skipped: nothing left in fold 1 (...)"}]


def test_report_shows_the_rows_as_their_own_table_only():
    record = {"scores": {"plain_mean": {"score": 0.8}, "gap": 0.01, contributions.KEY: RECORDED}}
    metrics, other = ensemble_tables(record)
    assert metrics["name"].tolist() == ["plain_mean"] and other["name"].tolist() == ["gap"]
    table = contribution_table(record)
    assert table["component"].tolist() == ["model a", "crop", "model b"]
    assert table.iloc[0, 1:3].tolist() == [0.7, 0.1] and table.iloc[1, 1:3].isna().all()
    assert contribution_table({"scores": {"gap": 0.01}}).empty


def _recipe(tmp_path, name: str, compare: str = "") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\n{compare}[data]\ndir = "data"\n[folds]\nn_folds = 2\n'
                    f'[ensemble]\nout = "{tmp_path / name}.json"\n'
                    '[[models]]\nname = "m"\nstage = "seg2d"\narch = "unet_tiny"\n')
    return str(path)


def test_pipeline_prints_each_recipes_contributions_beside(tmp_path, monkeypatch):
    """A second table under the headline numbers: one line per component, one column per recipe."""
    scores = {"plain_mean": {"score": 0.5}, "tuned_in_sample": {"score": 0.6}}
    write_ensemble(tmp_path / "base.json", {"runs": [], "params": {}, "scores": scores})
    write_ensemble(tmp_path / "full.json", {"runs": [], "params": {}, "scores": {
        **scores, "tuned_held_out": {"score": 0.55}, contributions.KEY: RECORDED}})
    _recipe(tmp_path, "base")
    monkeypatch.setattr(recipes, "run_recipe", lambda *args: None)
    recipes.run_pipeline(recipes.PipelineOptions(_recipe(tmp_path, "full", 'compare = ["base"]\n'), str(tmp_path)))
    headline, contribution = (tmp_path / "pipeline_full_results.txt").read_text().split("\n\n")
    assert headline.splitlines()[0].split() == ["base", "full"]
    lines = contribution.splitlines()
    assert lines[0].startswith(contributions.TITLE) and lines[0].split()[-2:] == ["base", "full"]
    assert [re.split(r"\s{2,}", line) for line in lines[1:]] == [
        ["model a", "-", "+0.1000"], ["crop", "-", "not used"], ["model b", "-", "skipped"]]

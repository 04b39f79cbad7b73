"""The tuner's guards against overfitting small OOF sets: member selection, classes sharing values,
the standard-error bar on every change, and the honest final choice with bootstrap intervals."""
import math

import numpy as np
import pytest

from src.core.errors import DataError
from src.ensembling import choice, contributions
from src.ensembling.choice import Candidate, choose
from src.ensembling.ensemble_file import load_ensemble
from src.ensembling.params import EnsembleParams
from src.ensembling.search import SearchSpace, _wins, make_case
from src.ensembling.tune import TuneOptions, tune
from src.ensembling.uncertainty import CaseTerms, bootstrap, interval, paired_gain_se, score_over
from src.metrics.competition import CaseDayScore, aggregate
from tests.test_ensemble import GROUPS2, SHAPE, _blobs, _fake_run, _model_probs, fake  # noqa: F401


def _case_scores(rng, n: int, shift: float = 0.0) -> list[tuple[str, CaseDayScore]]:
    """n case-days of random Dice rows (some empty: NaN) and Hausdorff (one case-day empty: NaN)."""
    out = []
    for i in range(n):
        dice = np.clip(rng.random((5, 3)) + shift, 0, 1)
        dice[rng.random((5, 3)) < 0.3] = np.nan
        hausdorff = math.nan if i == 0 else float(np.clip(rng.random() - shift, 0, 1))
        out.append((f"case{i}_day0", CaseDayScore(dice, hausdorff)))
    return out


def test_case_terms_reproduce_the_metric_on_any_subset():
    rng = np.random.default_rng(0)
    items = _case_scores(rng, 9)
    result = aggregate(items)
    assert CaseTerms.of(result).scores(np.ones((1, 9)))[0] == pytest.approx(result.score, abs=1e-12)
    subset = [items[i] for i in (0, 3, 4, 8)]
    assert score_over(result, [cd for cd, _ in subset]) == pytest.approx(aggregate(subset).score, abs=1e-12)
    # a resample drawing case-day 3 twice scores as the metric over that multiset
    twice = [items[3], items[3], items[5]]
    weights = np.zeros((1, 9))
    weights[0, 3], weights[0, 5] = 2, 1
    assert CaseTerms.of(result).scores(weights)[0] == pytest.approx(
        aggregate([(f"{cd}#{k}", s) for k, (cd, s) in enumerate(twice)]).score, abs=1e-12)


def test_bootstrap_is_fixed_and_paired():
    rng = np.random.default_rng(1)
    a = aggregate(_case_scores(rng, 20))
    b = aggregate(_case_scores(rng, 20, shift=0.05))
    assert np.array_equal(bootstrap(a), bootstrap(a))  # fixed seed
    assert paired_gain_se(a, a) == 0.0 and paired_gain_se(b, a) > 0
    low, high = interval(bootstrap(a))
    assert low < a.score < high
    # noise within the bar is refused, a clear gain passes it
    assert not _wins(b, a, 0.0, se_factor=1e6) and _wins(b, a, 0.0, se_factor=0.0) == (b.score > a.score)


def _candidate(name, rng, shift, n=12):
    result = aggregate(_case_scores(rng, n, shift))
    return Candidate(name, EnsembleParams.plain_mean({"m": "2d"}), result, result)


def test_choose_writes_the_best_held_out_and_says_by_how_much():
    rng = np.random.default_rng(2)
    cands = [_candidate("m alone", rng, 0.0), _candidate(choice.PLAIN, rng, -0.2), _candidate(choice.TUNED, rng, 0.2)]
    case_days = list(cands[0].held_out.per_case_day["case_day"])
    chosen, record = choose(cands, case_days)
    assert chosen.name == record["written"] == choice.TUNED
    rows = record["candidates"]
    assert rows[choice.TUNED]["delta"] == 0 and all(r["delta"] < 0 for n, r in rows.items() if n != choice.TUNED)
    assert all(r["low"] <= r["score"] <= r["high"] and r["delta_low"] <= r["delta"] <= r["delta_high"]
               for r in rows.values())
    assert choice.name_of(EnsembleParams.plain_mean(GROUPS2)) == choice.PLAIN
    assert choice.name_of(EnsembleParams.alone(GROUPS2, "b")) == choice.alone("b") == "b alone @0.5"
    assert choice.name_of(EnsembleParams.plain_mean(GROUPS2).replace_class("thresholds", 0, 0.4)) == choice.TUNED
    text = choice.table(record)
    assert "tuned ensemble" in text and text.count("<- written") == 1
    # a tie goes to the simpler candidate (listed first); only the given case-days are compared
    same = Candidate("other", cands[2].params, cands[2].in_sample, cands[2].held_out)
    assert choose([same, cands[2]], case_days)[0].name == "other"
    part = case_days[:5]
    assert choose(cands, part)[1]["candidates"]["m alone"]["score"] == pytest.approx(
        score_over(cands[0].held_out, part))


def test_classes_may_share_values_and_models_join_or_leave():
    rng = np.random.default_rng(3)
    truth = _blobs(rng)
    cases = [make_case("case1_day0", 0, {"a": _model_probs(truth, rng, 1.0, 1), "b": _model_probs(truth, rng, 2.0, 1)},
                       truth)]
    shared = SearchSpace.for_cases(cases, GROUPS2, per_class=False).coordinates()
    per_class = SearchSpace.for_cases(cases, GROUPS2).coordinates()
    labels = [label for label, _ in shared]
    assert labels[:2] == ["model a", "model b"] and "threshold" in labels and "threshold c0" not in labels
    assert len(per_class) - 2 > 2 * (len(shared) - 2)  # a third of the class-wise coordinates, plus members
    plain = EnsembleParams.plain_mean(GROUPS2)
    for label, candidates in shared:
        for p in candidates(plain):
            for values in (p.thresholds, p.fusion, p.min_size, p.gate_pixels, p.z_min_run, *p.weights.values()):
                assert len(set(values)) == 1, label
    # member selection: a model can be dropped while another can blend alone
    drop_a = dict(shared)["model a"](plain)
    assert len(drop_a) == 1 and drop_a[0].used_models() == ["b"]
    assert dict(shared)["model b"](drop_a[0]) == []  # b alone: it cannot be dropped too
    assert dict(shared)["model a"](drop_a[0]) == [plain]  # a dropped model can join again


def test_a_noise_member_is_dropped_and_the_written_ensemble_never_loses_to_the_good_one(fake, tmp_path, capsys):
    """Fabricated OOF: a good model and one of pure noise. Selection drops the noise in every fold of
    the held-out estimate, and what is written scores no worse held out than the good model alone."""
    root, runs, folds = fake
    rng = np.random.default_rng(4)
    noise = _fake_run(tmp_path / "runs", "noise", "seg2d", folds,
                      {cd: rng.random(SHAPE).astype(np.float16) for cd in folds})
    out = tmp_path / "e.json"
    record = tune(TuneOptions(runs=[runs["sharp"], noise], out=out, cache_dir=root / "cache", passes=1))
    scores = record["scores"]
    good = scores["models"]["sharp"]["score"]
    assert scores["models"]["noise"]["score"] < good and scores["plain_mean"]["score"] < good
    rows = {r["component"]: r for r in scores[contributions.KEY]}
    assert rows["model noise"]["note"] == contributions.NOT_USED  # weight 0 in every fold's parameters
    assert scores["written"]["held_out"]["score"] >= good
    assert scores["choice"]["candidates"][scores["written"]["name"]]["score"] == scores["written"]["held_out"]["score"]
    ensemble = load_ensemble(out)
    assert [m.name for m in ensemble.members] == ["sharp"] and list(ensemble.params.weights) == ["sharp"]
    assert "final choice (held-out, 6 case-days)" in capsys.readouterr().out


def test_nothing_kept_writes_the_best_model_alone_without_an_unused_gate(fake, tmp_path):
    """The search starts from the best model alone; with a bar nothing clears, that is what is written
    (named so), without the other model and without the gate it was given."""
    root, runs, _ = fake
    record = tune(TuneOptions(runs=[runs["sharp"], runs["soft"]], gate=runs["cls"], out=tmp_path / "e.json",
                              cache_dir=root / "cache", holdout_folds=(), passes=2, se_factor=1e9),
                  log=lambda line: None)
    models = record["scores"]["models"]
    best = max(models, key=lambda n: models[n]["score"])
    assert record["scores"]["written"] == {"name": choice.alone(best), "in_sample": models[best], "held_out": None}
    assert record["gate"] is None and record["auxiliary"] == [] and [r["name"] for r in record["runs"]] == [best]
    assert record["search"]["se_factor"] == 1e9 and record["search"]["per_class"] is True


def test_no_search_writes_the_plain_mean(fake, tmp_path):
    root, runs, _ = fake
    record = tune(TuneOptions(runs=[runs["sharp"], runs["soft"]], out=tmp_path / "e.json", cache_dir=root / "cache",
                              holdout_folds=(), passes=0), log=lambda line: None)
    assert record["scores"]["written"]["name"] == choice.PLAIN and len(record["runs"]) == 2


@pytest.mark.parametrize("field, value, message", [
    ("se_factor", -1.0, "--se-factor -1.0: must be a number >= 0"),
    ("se_factor", float("nan"), "--se-factor nan"),
])
def test_bad_selection_options(field, value, message):
    with pytest.raises(DataError, match=message):
        TuneOptions(runs=("r",), **{field: value})


def test_after_a_group_is_dropped_no_candidate_leaves_a_class_without_weight():
    rng = np.random.default_rng(5)
    truth = _blobs(rng)
    groups = {"a": "2d", "v": "3d"}
    cases = [make_case("case1_day0", 0, {n: _model_probs(truth, rng, 1.0, 1) for n in groups}, truth)]
    for per_class in (False, True):
        coords = dict(SearchSpace.for_cases(cases, groups, per_class=per_class).coordinates())
        dropped = coords["model v"](EnsembleParams.plain_mean(groups))[0]
        assert dropped.used_models() == ["a"]
        for label, candidates in coords.items():
            for p in candidates(dropped):
                assert p.used_models(), label  # raises if some class has no weight
        assert not any(candidates(dropped) for label, candidates in coords.items() if label.startswith("fusion"))
        # the 3D model joins again with the fusion of the plain mean (without_model set it to 0)
        assert dropped.fusion == (0.0,) * 3 and coords["model v"](dropped) == [EnsembleParams.plain_mean(groups)]

"""The ensemble scale benchmark fabricates OOF runs in the project's formats and measures the tuner."""
import numpy as np

from src.bench.ensemble import bench, fabricate, fake_probabilities
from src.bench.metric import organ_masks
from src.data.volumes import VolumeCache
from src.inference.runs import case_day_folds, prediction_files


def test_fabricated_runs_are_readable_by_the_tuner_inputs(tmp_path):
    runs = fabricate(tmp_path, case_days=4, models=3, shape=(12, 24, 20), folds=2, seed=0)
    cache = VolumeCache(tmp_path / "cache")
    assert len(cache.case_days()) == 4
    for run in runs:
        files = prediction_files(run, "oof")
        assert sorted(files) == cache.case_days() and set(case_day_folds(run).values()) == {0, 1}
        probs = np.load(files[cache.case_days()[0]])
        assert probs.dtype == np.float16 and probs.shape == (12, 3, 24, 20) and 0 <= probs.min() <= probs.max() <= 1


def test_fake_probabilities_follow_the_truth():
    rng = np.random.default_rng(0)
    truth = organ_masks(rng, (24, 64, 64))
    probs = fake_probabilities(rng, truth).astype(np.float32)
    assert probs[truth > 0].mean() > 3 * probs[truth == 0].mean() and (probs > 0.5).any()


def test_bench_reports_time_evaluations_and_memory(tmp_path):
    row = bench(4, 2, (10, 24, 24), folds=2, passes=1, holdout=False, workers=1, seed=0, work=tmp_path)
    assert row["case_days"] == 4 and row["models"] == 2 and row["evaluations"] > 10
    assert row["wall_s"] > 0 and row["s_per_eval"] > 0 and row["peak_rss_gb"] >= 0 and 0 < row["score"] <= 1
    assert not list(tmp_path.iterdir())  # the fabricated runs are removed

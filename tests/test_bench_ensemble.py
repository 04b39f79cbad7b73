"""The ensemble scale benchmark fabricates OOF runs in the project's formats and measures the tuner."""
import numpy as np
import pytest

from src.bench.ensemble import bench, fabricate, fake_probabilities, fake_weak_probabilities, main
from src.bench.metric import organ_masks
from src.bench.submit import bench as submit_bench
from src.core.errors import DataError
from src.data.volumes import VolumeCache
from src.ensembling.search import region_of_interest
from src.inference.runs import TrainedRun


def test_fabricated_runs_are_readable_by_the_tuner_inputs(tmp_path):
    runs = fabricate(tmp_path, case_days=4, models=3, shape=(12, 24, 20), folds=2, seed=0)
    cache = VolumeCache(tmp_path / "cache")
    assert len(cache.case_days()) == 4
    for run in runs:
        files = TrainedRun.load(run).prediction_files("oof")
        assert sorted(files) == cache.case_days() and set(TrainedRun.load(run).case_day_folds().values()) == {0, 1}
        probs = np.load(files[cache.case_days()[0]])
        assert probs.dtype == np.float16 and probs.shape == (12, 3, 24, 20) and 0 <= probs.min() <= probs.max() <= 1


def test_fake_probabilities_follow_the_truth():
    rng = np.random.default_rng(0)
    truth = organ_masks(rng, (24, 64, 64))
    probs = fake_probabilities(rng, truth).astype(np.float32)
    assert probs[truth > 0].mean() > 3 * probs[truth == 0].mean() and (probs > 0.5).any()


def test_a_weak_model_s_region_of_interest_is_nearly_the_whole_volume_and_a_good_one_s_is_not():
    rng = np.random.default_rng(1)
    truth = organ_masks(rng, (16, 64, 64))
    good, weak = fake_probabilities(rng, truth), fake_weak_probabilities(rng, truth)

    def share(probs):  # of the volume inside the region of interest
        return np.prod([s.stop - s.start for s in region_of_interest([probs], truth)]) / np.prod(truth[:, 0].shape)

    assert weak.dtype == np.float16 and weak.shape == truth.shape and share(weak) > 0.95 and share(good) < 0.8
    w = weak.astype(np.float32)
    assert 0 <= w.min() and w.max() <= 1 and ((w >= 0.3) & (w <= 0.6)).mean() > 0.9
    assert w[truth > 0].mean() > w[truth == 0].mean() + 0.05  # only a faint bump on the truth


def test_weak_models_are_the_last_ones_and_at_least_one_good_model_remains(tmp_path):
    runs = fabricate(tmp_path, case_days=2, models=3, shape=(8, 16, 16), folds=2, seed=0, weak=2)
    assert [r.name for r in runs] == ["m0", "w1", "w2"]
    for argv in (["--models", "2,4", "--weak", "2"], ["--models", "3", "--weak", "5"], ["--weak", "-1"]):
        with pytest.raises(DataError, match="--weak") as err:
            main([*argv, "--case-days", "2", "--shape", "8,16,16", "--work", str(tmp_path / "scratch")])
        assert "\n" not in str(err.value)
    assert not (tmp_path / "scratch").exists()  # refused before fabricating anything


def test_repeated_case_days_share_their_oof_files_but_not_their_truth(tmp_path):
    runs = fabricate(tmp_path, case_days=6, models=2, shape=(8, 16, 16), folds=2, seed=0, distinct=2)
    files = TrainedRun.load(runs[0]).prediction_files("oof")
    assert len(files) == 6 and files["case3_day0"].samefile(files["case1_day0"])
    assert not files["case1_day1"].samefile(files["case1_day0"])
    cache = VolumeCache(tmp_path / "cache")
    assert cache.load("case3_day0").ids[0] == "case3_day0_slice_0001"
    assert np.array_equal(cache.load("case3_day0").mask, cache.load("case1_day0").mask)


def test_bench_reports_time_evaluations_and_memory(tmp_path):
    row = bench(6, 2, (10, 24, 24), folds=3, passes=1, holdout=True, workers=2, memory_gb=8.0, screen=0,
                distinct=None, seed=0, work=tmp_path, weak=1)
    assert row["case_days"] == 6 and row["models"] == 2 and row["evaluations"] > 10 and row["stride"] == 1
    assert row["weak"] == 1 and 0 < row["best_single"] <= 1 and row["written"]  # "-" until the tuner records it
    assert row["wall_s"] > 0 and row["s_per_eval"] > 0 and row["peak_rss_gb"] > 0 and row["proxy_gb"] > 0
    assert 0 < row["held_out"] <= row["in_sample"] + 0.05 and 0 < row["in_sample"] <= 1
    assert not list(tmp_path.iterdir())  # the fabricated runs are removed


def test_submit_bench_measures_submit_and_predict_on_a_generated_test_split(tmp_path):
    row = submit_bench(2, 1, train_cases=1, arch="unet_tiny", img_size=32, seed=0, work=tmp_path,
                       sizes=[(48, 40)], slices=[8])
    assert row["test_case_days"] >= 2 and row["test_slices"] == 8 * row["test_case_days"]
    assert row["submit_wall_s"] > 0 and row["predict_wall_s"] > 0
    assert 0 < row["submit_peak_rss_gb"] < 4 and 0 < row["predict_peak_rss_gb"] < 4
    assert not list(tmp_path.iterdir())  # its scratch folder is removed


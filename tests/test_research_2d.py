"""Research tooling on a tiny 2D dataset (EBHI-Seg-like RGB): the benchmark builds the seg2d task's model
(the description's channels and classes) and times the 2D ImageDataset, with and without a training;
pruning sensitivity of a 2D run scored with the mean per-image Dice (src.metrics.overlap)."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from src.core.errors import DataError
from src.data.folds import make_folds
from src.data.image_cache import ImageCache
from src.data.image_samples import ImageInput, label_map
from src.data.synthetic2d import generate_dataset
from src.engine.config import Seg2DConfig
from src.engine.seg2d import seg2d_task
from src.metrics.overlap import image_means, image_table
from src.models.registry import count_parameters
from tests.expect import TINY_TRAIN

TINY = TINY_TRAIN


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("research2d")
    generate_dataset("ebhi", root / "ebhi", images=12, unlabelled=0, size=(40, 32))
    make_folds(root / "ebhi", n_folds=2, seed=0).to_csv(root / "folds.csv", index=False)
    return root


def test_benchmark_on_2d_images_builds_the_tasks_model_and_trains(work):
    from src.research.benchmark import BenchmarkOptions, run_benchmark

    opts = BenchmarkOptions(archs=("unet_tiny",), img_size=24, batch_size=4, repeats=1, train_epochs=1,
                            data_dir=str(work / "ebhi"), cache_dir=str(work / "cache"),
                            folds_csv=str(work / "folds.csv"), threads=1, out=str(work / "bench"))
    lines = []
    table = run_benchmark(opts, log=lines.append)  # prepares the cache on the way
    assert "prepare: " in lines[0]
    row = table.iloc[0]
    assert row["status"] == "ok", row["status"]
    for column in ("params_m", "gmacs", "train_ms", "infer_ms", "data_ms", "peak_mb", "train_s", "val_score", "val_dice"):
        assert math.isfinite(row[column]), column
    assert row["gmacs"] > 0 and row["train_ms"] > 0 and row["infer_ms"] > 0 and row["data_ms"] > 0
    description = ImageCache(work / "cache").description
    model = seg2d_task(Seg2DConfig(arch="unet_tiny", img_size=24, device="cpu"), work / "cache").build_model()
    first = next(p for p in model.parameters() if p.ndim == 4)
    assert first.shape[1] == description.n_channels == 3
    assert row["params_m"] == pytest.approx(count_parameters(model) / 1e6)
    assert 0 <= row["val_score"] <= 1 and row["val_dice"] == pytest.approx(row["val_score"])  # the dataset's Dice
    run = work / "bench" / "runs" / "bench_unet_tiny_24px_b4_e1" / "fold0"
    assert row["val_score"] == pytest.approx(pd.read_csv(run / "oof_scores.csv")["dice"].mean())


def test_benchmark_on_2d_images_without_training_and_channels_refused(work):
    from src.research.benchmark import BenchmarkOptions, run_benchmark

    common = {"archs": ("unet_tiny",), "img_size": 24, "batch_size": 4, "repeats": 2, "data_dir": str(work / "ebhi"),
              "cache_dir": str(work / "cache"), "threads": 1, "out": str(work / "bench_plain")}
    table = run_benchmark(BenchmarkOptions(**common), log=lambda *_: None)
    assert list(table.columns) == ["arch", "status", "device", "params_m", "gmacs", "train_ms", "infer_ms",
                                   "data_ms", "peak_mb"]
    row = table.iloc[0]
    assert row["status"] == "ok" and all(math.isfinite(row[c]) for c in table.columns[3:])
    with pytest.raises(DataError, match="--channels is an option of slice volumes") as err:
        run_benchmark(BenchmarkOptions(**{**common, "channels": 5}), log=lambda *_: None)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def trained_run(work):
    from src.research.evaluation import train

    train(["--data-dir", str(work / "ebhi"), "--cache-dir", str(work / "cache"), "--folds-csv",
           str(work / "folds.csv"), "--fold", "0", "--out", str(work / "runs"), "--name", "tiny", *TINY])
    return work / "runs" / "tiny"


def _direct_dice(run, cache_dir) -> tuple[float, float]:
    """The unpruned fold's mean per-image Dice and Jaccard, predicted and scored here without the pruning code."""
    from src.inference.fold_model import FoldModel
    from src.inference.runs import TrainedRun

    fold = TrainedRun.load(run).folds["0"]
    loaded = FoldModel.load(fold, torch.device("cpu"), cache_dir)
    task = loaded.task
    maps = []
    with torch.no_grad():
        for key in fold.val_case_days:
            entry = ImageInput.of(key, *task.cache.load(key))
            probs = task.predict_volume(loaded.model, entry, torch.device("cpu"))
            maps.append((key, "", label_map(probs, task.cfg.threshold), np.asarray(entry.mask)))
    per_image = image_means(image_table(maps, task.description.labels))
    return float(per_image["dice"].mean()), float(per_image["jaccard"].mean())


def test_pruning_a_2d_run_scores_the_datasets_dice(work, trained_run):
    from src.prune import main

    out = work / "prune"
    assert main(["--run", str(trained_run), "--amounts", "0.5", "--remove", "--threads", "1", "--out", str(out)]) == 0
    table = pd.read_csv(out / "prune.csv")
    assert list(table["module"]) == ["none", "all"]
    labels = ImageCache(work / "cache").description.labels
    for column in ("score", "drop_score", "jaccard", "drop_jaccard", *[f"dice_{c}" for c in labels],
                   *[f"drop_dice_{c}" for c in labels], "sparsity", "model_sparsity", "checkpoint_gz_mb"):
        assert column in table.columns, column
    assert not {"comp_dice", "hausdorff", "dice_stomach"} & set(table.columns)
    dice, jaccard = _direct_dice(trained_run, work / "cache")
    none = table.iloc[0]
    assert none["amount"] == 0 and none["score"] == pytest.approx(dice) and none["jaccard"] == pytest.approx(jaccard)
    log = pd.read_csv(trained_run / "fold0" / "log.csv")
    assert none["score"] == pytest.approx(log["val_score"].iloc[0])  # the run's own validation Dice
    pruned = table.iloc[1]
    assert abs(pruned["sparsity"] - 0.5) < 0.01 and 0 <= pruned["score"] <= 1
    assert pruned["drop_score"] == pytest.approx(none["score"] - pruned["score"])
    assert pruned["drop_jaccard"] == pytest.approx(none["jaccard"] - pruned["jaccard"])
    assert (out / "prune_heatmap.png").stat().st_size > 1000
    assert "drop_jaccard" in (out / "prune.md").read_text()

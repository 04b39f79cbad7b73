"""src.ablate on 2D data (the EBHI-Seg protocol): --split MODE[:TRAIN_FRACTION], splits of images
(random) or whole groups (grouped) written as 2D folds files, cells scored per image and per category
from their OOF, the long per-category summary with paired differences, and a re-run that trains nothing."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from src.core.errors import DataError, run_cli
from src.data.folds import load_sample_folds
from src.data.synthetic2d import generate_dataset
from src.data.synthetic2d.ebhi import CATEGORIES
from src.research.ablation import (
    AblationOptions,
    draw_image_split,
    image_split_table,
    parse_split,
    plot_images,
    run_ablation,
    summarise_images,
)


# ---- --split -------------------------------------------------------------------------------------
def test_split_takes_an_optional_training_fraction(capsys):
    from src import ablate

    assert parse_split("random") == ("random", None) and parse_split("grouped:0.75") == ("grouped", 0.75)
    opts = AblationOptions(base=(), split="random:0.8")
    assert (opts.split_mode, opts.split_val_fraction) == ("random", 0.2)  # 0.2 exactly: the cells' names hash it
    assert AblationOptions(base=(), split="grouped:0.7", val_fraction=0.3).split_val_fraction == 0.3
    assert AblationOptions(base=(), split="grouped", val_fraction=0.3).split_val_fraction == 0.3
    for text in ("shuffled", "random:", "random:abc", "random:0.8:1", "Random:0.8"):
        with pytest.raises(DataError, match="--split: expected random or grouped, optionally"):
            AblationOptions(base=(), split=text)
    for text in ("random:0", "random:1", "grouped:1.5"):
        with pytest.raises(DataError, match="the training fraction must be in"):
            AblationOptions(base=(), split=text)
    with pytest.raises(DataError, match="validates on 0.2 but --val-fraction says 0.3"):
        AblationOptions(base=(), split="random:0.8", val_fraction=0.3)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_cli(ablate.main, ["--base", "", "--split", "random:80"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "--split random:80: the training fraction" in err[0], err


# ---- drawing 2D splits ----------------------------------------------------------------------------
def cars(n_cars: int = 5, views: int = 4) -> pd.DataFrame:
    """A Carvana-like table: `views` images per car (the group), no stratum."""
    ids = [f"car{c}_{v:02d}" for c in range(n_cars) for v in range(views)]
    return pd.DataFrame({"id": ids, "group": [i[:4] for i in ids], "stratum": [None] * len(ids)})


def test_random_splits_draw_images_and_grouped_splits_keep_groups_whole(tmp_path):
    table = cars()
    draws = [draw_image_split(table, "random", 0.2, seed) for seed in range(6)]
    assert all(len(val) == 4 and val == sorted(val) for val in draws)
    assert draw_image_split(table, "random", 0.2, 3) == draws[3] and len({tuple(v) for v in draws}) > 1
    assert any(0 < sum(i.startswith(car) for i in val) < 4 for val in draws for car in set(table["group"]))  # groups ignored
    for seed, val in enumerate(draws):
        folds = image_split_table(table, val, "random")
        assert (folds["group"] == folds["id"]).all() and list(folds.loc[folds.fold == 0, "id"]) == val
        folds.to_csv(tmp_path / f"r{seed}.csv", index=False)
        assert len(load_sample_folds(tmp_path / f"r{seed}.csv")) == 20  # the grouped-folds check holds
    grouped = [draw_image_split(table, "grouped", 0.3, seed) for seed in range(6)]
    assert grouped == [draw_image_split(table, "grouped", 0.3, seed) for seed in range(6)]  # seeded
    for seed, val in enumerate(grouped):
        cars_in = {i[:4] for i in val}
        assert len(val) == 8 and all(i in val for i in table["id"] if i[:4] in cars_in)  # whole cars, >= 30 %
        folds = image_split_table(table, val, "grouped")
        assert list(folds["group"]) == list(table["group"]) and folds["stratum"].eq("").all()
        folds.to_csv(tmp_path / f"g{seed}.csv", index=False)
        assert load_sample_folds(tmp_path / f"g{seed}.csv").groupby("group")["fold"].nunique().max() == 1
    assert len(draw_image_split(cars(2), "grouped", 0.9, 0)) == 4  # one car always trains
    with pytest.raises(DataError, match="--split grouped: the data has fewer than 2 groups"):
        draw_image_split(cars(1), "grouped", 0.2, 0)


# ---- the summary ----------------------------------------------------------------------------------
def hand_cells() -> pd.DataFrame:
    """Three splits of base and one variant; category B is missing from the variant's split 2."""
    rows = []
    for variant, shift in (("base", 0.0), ("lr=1e-2", 0.1)):
        for r, j in enumerate((0.5, 0.6, 0.7)):
            row = {"variant": variant, "repeat": r, "jaccard": j + shift + 0.01 * r * (variant != "base"),
                   "dice": j + 0.2, "precision": 0.9, "recall": 0.4 + r / 10,
                   "jaccard@A": j - 0.1, "dice@A": j, "precision@A": 0.8, "recall@A": 0.5}
            if not (variant != "base" and r == 2):
                row |= {"jaccard@B name": 2 * j - 0.5, "dice@B name": j, "precision@B name": 1.0, "recall@B name": 0.1}
            rows.append(row)
    return pd.DataFrame(rows)


def test_summary_has_mean_and_sd_per_category_and_paired_differences(tmp_path):
    summary = summarise_images(hand_cells(), ["base", "lr=1e-2"], ["A", "B name"], confidence=0.95)
    assert list(summary[["variant", "category"]].itertuples(index=False, name=None)) == [
        ("base", "all"), ("base", "A"), ("base", "B name"), ("lr=1e-2", "all"), ("lr=1e-2", "A"), ("lr=1e-2", "B name")]
    rows = summary.set_index(["variant", "category"])
    assert rows.loc[("base", "all"), "jaccard_mean"] == pytest.approx(0.6)
    assert rows.loc[("base", "all"), "jaccard_sd"] == pytest.approx(0.1)
    assert rows.loc[("base", "A"), "jaccard_mean"] == pytest.approx(0.5)
    assert rows.loc[("base", "B name"), "jaccard_sd"] == pytest.approx(0.2)
    assert rows.loc[("base", "all"), "recall_sd"] == pytest.approx(0.1) and rows.loc[("base", "all"), "precision_sd"] == 0
    assert rows.loc[("lr=1e-2", "B name"), "n"] == 2 and rows.loc[("lr=1e-2", "B name"), "jaccard_mean"] == pytest.approx(0.6)
    assert rows.loc[("lr=1e-2", "A"), "n"] == 3
    # paired difference of overall Jaccard: 0.10, 0.11, 0.12 -> mean 0.11 +- t(0.975, 2) * 0.01 / sqrt(3)
    variant = rows.loc[("lr=1e-2", "all")]
    half = stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert variant["d_jaccard"] == pytest.approx(0.11)
    assert (variant["d_jaccard_lo"], variant["d_jaccard_hi"]) == pytest.approx((0.11 - half, 0.11 + half))
    assert variant["d_dice"] == pytest.approx(0.0) and variant["beyond_noise"] == "yes"
    assert math.isnan(rows.loc[("base", "all"), "d_jaccard"]) and rows.loc[("base", "all"), "beyond_noise"] == ""
    assert summary.loc[summary.category != "all", "d_jaccard"].isna().all()
    plot_images(summary, ["base", "lr=1e-2"], tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 1000


# ---- end to end on synthetic EBHI-Seg --------------------------------------------------------------
def test_ablation_on_ebhi_scores_per_category_and_a_rerun_trains_nothing(tmp_path):
    generate_dataset("ebhi", tmp_path / "ebhi", images=12, unlabelled=0, size=(32, 32))
    out = tmp_path / "ablation"
    base = ("--data-dir", str(tmp_path / "ebhi"), "--cache-dir", str(tmp_path / "cache"), "--arch", "unet_classic_tiny",
            "--epochs", "1", "--img-size", "32", "--batch-size", "8", "--device", "cpu", "--workers", "0",
            "--augment", "none", "--threshold", "0.4")
    opts = AblationOptions(base=base, vary=(("lr", ("1e-2",)),), repeats=2, split="random:0.8", out=str(out))
    lines = []
    summary = run_ablation(opts, log=lines.append)
    assert lines[0].startswith("prepare: ") and "12 images written" in lines[0]  # the cache was prepared
    trained = [line for line in lines if "trained in" in line]
    assert len(trained) == 4 and all(": jaccard " in line for line in trained)
    categories = ["all", *sorted(CATEGORIES)]
    assert list(summary["category"]) == categories * 2 and list(summary["variant"]) == ["base"] * 7 + ["lr=1e-2"] * 7
    splits = sorted((out / "splits").glob("*.csv"))
    assert [p.name for p in splits] == ["random_0.2_seed0.csv", "random_0.2_seed1.csv"]
    for path in splits:
        folds = load_sample_folds(path)
        assert (folds["fold"] == 0).sum() == 2 and (folds["group"] == folds["id"]).all()
        assert set(folds["stratum"]) == set(CATEGORIES)
    records = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    assert len(records) == 4 and all(r["images"] == 2 and 0 <= r["jaccard"] <= r["dice"] <= 1 for r in records)
    for record in records:  # the categories of its validation images, each scored
        per = {k.split("@", 1)[1] for k in record if k.startswith("jaccard@")}
        assert per and per <= set(CATEGORIES) and sum(record[f"images@{c}"] for c in per) == 2
        config = json.loads((out / "runs" / record["run"] / "fold0" / "config.json").read_text())
        assert config["config"]["threshold"] == 0.4 and config["config"]["folds_csv"] == str(splits[record["repeat"]])
    cells = pd.read_csv(out / "cells.csv")
    base_cells, varied = (cells[cells.variant == v].set_index("repeat") for v in ("base", "lr=1e-2"))
    overall = summary[summary.category == "all"].set_index("variant")
    assert overall.loc["lr=1e-2", "d_jaccard"] == pytest.approx((varied["jaccard"] - base_cells["jaccard"]).mean())
    assert overall.loc["base", "jaccard_mean"] == pytest.approx(base_cells["jaccard"].mean())
    assert pd.read_csv(out / "ablation.csv").shape[0] == 14
    md = (out / "ablation.md").read_text()
    assert "| variant | category | n | Jaccard | Dice |" in md and "| base | all | 2 |" in md
    assert "| High-grade IN |" in md and "| variant | n | Δ Jaccard [CI] | Δ Dice [CI] | beyond noise |" in md
    assert (out / "ablation.png").stat().st_size > 1000
    assert not (out / "cache_aliased").exists()

    weights = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("best.pt")}
    assert len(weights) == 4
    again = []
    rerun = run_ablation(opts, log=again.append)
    assert len(again) == 4 and all("finished earlier" in line for line in again)
    assert {p: p.stat().st_mtime_ns for p in weights} == weights
    assert np.allclose(rerun["jaccard_mean"], summary["jaccard_mean"], equal_nan=True)

    with pytest.raises(DataError, match=r"--vary channels=1: --channels is an option of slice volumes; .* holds 2D"):
        run_ablation(AblationOptions(base=base, vary=(("channels", ("1",)),), out=str(out)))

"""Training one fold on tiny 2D datasets (EBHI-Seg-like RGB, nnU-Net-like 2 channels): artifacts, OOF
at each image's size, determinism, the model's input channels, folds of the wrong kind."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from src.core.artifacts import load_prediction
from src.core.errors import DataError
from src.data.folds import load_sample_folds, make_folds
from src.data.geometry import Geometry
from src.data.image_cache import entry_key
from src.data.image_samples import label_map, model_input, one_hot
from src.data.synthetic2d import generate_dataset
from src.engine.config import Seg2DConfig, Seg3DConfig
from src.engine.run import train
from src.make_folds import main as make_folds_main
from src.train import main
from tests.expect import TINY_TRAIN

TINY = TINY_TRAIN


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("train2d")
    generate_dataset("ebhi", root / "ebhi", images=12, unlabelled=0, size=(40, 32))
    generate_dataset("nnunet", root / "Dataset501_Tiny", cases=8, test_cases=0, size=(32, 32))
    make_folds(root / "Dataset501_Tiny", n_folds=2, seed=0).to_csv(root / "nnunet_folds.csv", index=False)
    return root


def nnunet_config(work, name, **overrides) -> Seg2DConfig:
    values = dict(data_dir=str(work / "Dataset501_Tiny"), cache_dir=str(work / "cache_nnunet"),
                  folds_csv=str(work / "nnunet_folds.csv"), out=str(work / "runs"), name=name, arch="unet_tiny",
                  img_size=24, batch_size=4, epochs=1, workers=0, device="cpu")
    return Seg2DConfig(**{**values, **overrides})


def test_default_command_trains_a_fold_deterministically(work, monkeypatch):
    monkeypatch.chdir(work)  # default cache (cache/ebhi, prepared on the fly) and folds file (folds/folds.csv)
    assert make_folds_main(["--data-dir", "ebhi", "--n-folds", "2"]) == 0
    for name in ("a", "b"):
        assert main(["--data-dir", "ebhi", "--fold", "0", "--name", name, *TINY]) == 0
    run = work / "runs" / "a" / "fold0"
    folds = pd.read_csv(work / "folds" / "folds.csv")
    val = sorted(entry_key(i) for i in folds.loc[folds.fold == 0, "id"])
    saved = json.loads((run / "config.json").read_text())
    assert sorted(saved["val_case_days"]) == val and not set(val) & set(saved["train_case_days"])
    for key in val:
        oof = load_prediction(run / "oof" / f"{key}.npy", image=True)
        assert oof.dtype == np.float16 and oof.shape == (1, 32, 40)  # one class, at the image's size
    scores = pd.read_csv(run / "oof_scores.csv")
    assert sorted(scores["key"]) == val and {"id", "stratum", "dice", "jaccard"} <= set(scores)
    log = pd.read_csv(run / "log.csv")
    assert math.isfinite(log["val_score"].iloc[0]) and {"val_dice", "val_jaccard"} <= set(log)
    assert abs(scores["dice"].mean() - log["val_score"].iloc[0]) < 1e-9
    a, b = (torch.load(work / "runs" / n / "fold0" / "best.pt", weights_only=True)["model"] for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_model_input_channels_follow_the_data(work):
    score = train(nnunet_config(work, "nn"))
    run = work / "runs" / "nn" / "fold0"
    weights = torch.load(run / "best.pt", weights_only=True)["model"]
    first = next(v for k, v in weights.items() if v.ndim == 4)
    assert first.shape[1] == 2  # two gray channels per case
    oofs = sorted((run / "oof").glob("*.npy"))
    assert oofs and all(load_prediction(p, image=True).shape == (2, 32, 32) for p in oofs)  # two classes
    assert 0.0 <= score <= 1.0


def test_wrong_inputs_on_2d_data_are_one_line_errors(work):
    gi = work / "gi_folds.csv"
    gi.write_text("case,day,case_day,fold\n1,0,case1_day0,0\n")
    with pytest.raises(DataError, match="gi_folds.csv: folds of case-days") as err:
        train(nnunet_config(work, "gi", folds_csv=str(gi)))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="--stride is an option of slice volumes"):
        train(nnunet_config(work, "stride", stride=1))
    with pytest.raises(DataError, match="--stage seg3d: .* holds 2D images"):
        train(Seg3DConfig(**{k: getattr(nnunet_config(work, "x"), k) for k in ("data_dir", "cache_dir", "folds_csv", "out")},
                          arch="unet3d_tiny", device="cpu"))


@pytest.mark.parametrize("rows, message", [
    ("id,group,stratum,fold\na,a,,0\na,a,,1\n", "row 3: image a listed twice"),
    ("id,group,stratum,fold\na,g,,0\nb,g,,1\n", "group g is in more than one fold"),
    ("id,group,stratum,fold\na,a,,-1\n", "column fold must hold non-negative integers"),
    ("id,group,fold\na,a,0\n", r"missing column\(s\) stratum"),
    ("case,day,case_day,fold\n1,0,case1_day0,0\n", "folds of case-days, but the data has images"),
])
def test_load_sample_folds_checks_the_file(tmp_path, rows, message):
    path = tmp_path / "folds.csv"
    path.write_text(rows)
    with pytest.raises(DataError, match=message):
        load_sample_folds(path)


def test_image_samples_scaling_targets_and_label_maps():
    geometry = Geometry(4)
    rgb = np.full((4, 4, 3), 51, np.uint8)
    assert np.allclose(model_input(rgb, geometry), 0.2)  # uint8 / 255
    deep = np.stack([np.full((4, 4), 1000), np.full((4, 4), 4000), np.zeros((4, 4))], axis=2).astype(np.uint16)
    assert np.allclose(model_input(deep, geometry), [[[1.0]], [[1.0]], [[0.0]]])  # uint16 by each channel's max
    mask = np.array([[0, 1], [2, 1]], np.uint8)
    assert one_hot(mask, 2).tolist() == [[[0, 1], [0, 1]], [[0, 0], [1, 0]]]
    probs = np.array([[[0.6, 0.2], [0.4, 0.9]], [[0.1, 0.8], [0.3, 0.95]]])
    assert label_map(probs, 0.5).tolist() == [[1, 2], [0, 2]]  # most probable class above the threshold


def test_exclude_names_the_same_image_ids_in_make_folds_and_training(work, monkeypatch):
    """An EBHI id holds a '/', so its cache key differs from it; both commands take the id."""
    monkeypatch.chdir(work)
    left_out = sorted(pd.read_csv(work / "folds" / "folds.csv")["id"])[0] if (work / "folds" / "folds.csv").exists() \
        else None
    if left_out is None:
        assert make_folds_main(["--data-dir", "ebhi", "--n-folds", "2"]) == 0
        left_out = sorted(pd.read_csv(work / "folds" / "folds.csv")["id"])[0]
    assert "/" in left_out and entry_key(left_out) != left_out
    assert make_folds_main(["--data-dir", "ebhi", "--n-folds", "2", "--exclude", left_out,
                            "--out", str(work / "excluded.csv")]) == 0
    assert main(["--data-dir", "ebhi", "--fold", "0", "--name", "ex", "--folds-csv", str(work / "excluded.csv"),
                 "--exclude", left_out, *TINY]) == 0
    saved = json.loads((work / "runs" / "ex" / "fold0" / "config.json").read_text())
    assert entry_key(left_out) not in saved["train_case_days"] + saved["val_case_days"]
    assert len(saved["train_case_days"]) + len(saved["val_case_days"]) == 11

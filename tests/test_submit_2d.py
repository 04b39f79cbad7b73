"""The submission on 2D data: tiny Carvana and nnU-Net sets, trained for one epoch, submitted with
`python -m src.submit --runs` (with --ensemble: tests/test_ensemble_2d.py): the Carvana CSV against the sample and the truth, label images named like
the inputs, an arbitrary --images folder, bad outputs and flags, and the shared prediction path
(ImageInput through FoldModel, RunPredictor and TTA)."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from src.core.errors import DataError
from src.data.folds import make_folds
from src.data.formats.base import Sample
from src.data.formats.carvana import FORMAT as CARVANA
from src.data.formats.nnunet import FORMAT as NNUNET
from src.data.image_samples import ImageInput
from src.data.synthetic2d import generate_dataset
from src.engine.config import Seg2DConfig
from src.engine.run import train
from src.ensembling.submission import SubmitOptions
from src.inference.predict import RunPredictor
from src.inference.runs import TrainedRun
from src.inference.tta import flip_volume
from src.score import main as score_main
from src.submit import main as submit_main


def _train(root: Path, data: str, name: str, folds: tuple[str, ...]) -> Path:
    make_folds(root / data, n_folds=2, seed=0).to_csv(root / f"{name}_folds.csv", index=False)
    for fold in folds:
        train(Seg2DConfig(data_dir=str(root / data), cache_dir=str(root / "cache" / name),
                          folds_csv=str(root / f"{name}_folds.csv"), out=str(root / "runs"), name=name, fold=fold,
                          arch="unet_tiny", img_size=32, batch_size=4, epochs=1, workers=0, device="cpu"))
    return root / "runs" / name


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("submit2d")
    generate_dataset("carvana", root / "car", cars=2, test_cars=1, views=4, size=(48, 32))
    generate_dataset("nnunet", root / "Dataset502_Tiny", cases=6, test_cases=2, size=(40, 32))
    _train(root, "car", "car", ("0", "1"))
    _train(root, "Dataset502_Tiny", "nn", ("0",))
    return root


def _submit(work: Path, *flags: str) -> None:
    assert submit_main([*flags, "--device", "cpu"]) == 0


def test_carvana_csv_follows_the_sample_and_scores(work, capsys):
    out = work / "sub" / "car.csv"
    _submit(work, "--runs", str(work / "runs" / "car"), "--data-dir", str(work / "car"), "--out", str(out),
            "--tta", "hflip")
    sub, sample = pd.read_csv(out, keep_default_na=False), pd.read_csv(work / "car" / "sample_submission.csv")
    assert list(sub.columns) == ["img", "rle_mask"] and sorted(sub["img"]) == sorted(sample["img"])
    capsys.readouterr()
    assert score_main(["--data-dir", str(work / "car"), "--pred", str(out), "--truth",
                       str(work / "car_test_truth.csv"), "--json"]) == 0
    dice = json.loads(capsys.readouterr().out)["dice"]
    assert np.isfinite(dice) and 0 <= dice <= 1


def test_nnunet_label_images_are_named_like_the_inputs(work, capsys):
    out = work / "sub" / "nn"
    data = work / "Dataset502_Tiny"
    _submit(work, "--runs", str(work / "runs" / "nn"), "--data-dir", str(data), "--out", str(out), "--threshold", "0.4")
    cases = [s.id for s in NNUNET.samples(data, "test").samples]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{c}.png" for c in cases)
    assert json.loads((out / "submission.json").read_text())["threshold"] == 0.4
    description = NNUNET.describe(data)
    for sample in NNUNET.samples(data, "test").samples:
        label = NNUNET.read_label(Sample(sample.id, sample.images, label=out / f"{sample.id}.png"), description)
        assert label.shape == (32, 40) and label.max() <= description.n_classes
    capsys.readouterr()
    assert score_main(["--data-dir", str(data), "--pred", str(out), "--truth", str(work / "Dataset502_Tiny_test_truth"),
                       "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["dice"] <= 1


def test_images_folder_of_any_names_gives_png_labels(work):
    images = work / "any"
    tests = sorted((work / "car" / "test").glob("*.jpg"))
    (images / "sub").mkdir(parents=True)
    shutil.copy(tests[0], images / "first view.jpg")
    shutil.copy(tests[1], images / "sub" / "b.jpg")
    out = work / "sub" / "any"
    _submit(work, "--runs", str(work / "runs" / "car"), "--data-dir", str(work / "car"), "--images", str(images),
            "--out", str(out))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["first view.png", "sub/b.png"]
    description = CARVANA.describe(work / "car")
    label = CARVANA.read_label(Sample("b", (images / "sub" / "b.jpg",), label=out / "sub" / "b.png"), description)
    assert label.shape == (32, 48) and set(np.unique(label)) <= {0, 1}


@pytest.mark.parametrize("where", ["data", "runs"])
def test_bad_out_is_a_one_line_error_and_nothing_is_written(work, where):
    out = {"data": work / "car" / "sub.csv", "runs": work / "runs" / "car"}[where]
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    with pytest.raises(DataError, match="--out") as err:
        _submit(work, "--runs", str(work / "runs" / "car"), "--data-dir", str(work / "car"), "--out", str(out))
    assert "\n" not in str(err.value)
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before


def test_a_failed_csv_leaves_nothing(work, tmp_path):
    data = tmp_path / "car"
    shutil.copytree(work / "car", data)
    sample = pd.read_csv(data / "sample_submission.csv")
    sample.iloc[1:].to_csv(data / "sample_submission.csv", index=False)  # one test image the sample lacks
    out = tmp_path / "sub.csv"
    with pytest.raises(DataError, match="sample_submission.csv: has no img"):
        _submit(work, "--runs", str(work / "runs" / "car"), "--data-dir", str(data), "--out", str(out))
    assert list(tmp_path.iterdir()) == [data]


def test_flags_and_runs_must_fit_the_data(work):
    car = work / "car"
    with pytest.raises(DataError, match="--runs: give --ensemble or --runs, not both"):
        _submit(work, "--ensemble", "e.json", "--runs", str(work / "runs" / "car"), "--data-dir", str(car))
    with pytest.raises(DataError, match="--ensemble or --runs: required"):
        _submit(work, "--data-dir", str(car))
    with pytest.raises(DataError, match="--tta: applies to 2D data only"):
        SubmitOptions(data_dir=Path("d"), ensemble=Path("e.json"), tta=("hflip",)).check_kind(two_d=False)
    with pytest.raises(DataError, match="--batch-size: applies to the GI data only"):
        _submit(work, "--runs", str(work / "runs" / "car"), "--data-dir", str(car), "--batch-size", "4")
    with pytest.raises(DataError, match="--runs .*nn: trained on channels"):
        _submit(work, "--runs", str(work / "runs" / "nn"), "--data-dir", str(car), "--out", str(work / "x.csv"))
    (work / "empty").mkdir()
    with pytest.raises(DataError, match="no test images to predict"):
        _submit(work, "--runs", str(work / "runs" / "car"), "--data-dir", str(car), "--images", str(work / "empty"),
                "--out", str(work / "y"))


def test_every_test_image_is_read_with_the_cap(work, tmp_path):
    """--max-image-pixels on 2D data reaches each image read where it lies: nnU-Net's description reads no
    pixels, so below the test images' size the first refusal names a test image; at it, the submission is
    written. Carvana with --images: one image larger than the train ones is refused, naming it."""
    data, out = work / "Dataset502_Tiny", tmp_path / "nn"
    nn = ("--runs", str(work / "runs" / "nn"), "--data-dir", str(data), "--out", str(out))
    with pytest.raises(DataError) as info:
        _submit(work, *nn, "--max-image-pixels", "1279")  # 40 x 32 = 1280 pixels
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(data / "imagesTs" / ""))
    assert message.endswith("is over the cap of 1279 (raise it with --max-image-pixels)") and not out.exists()
    _submit(work, *nn, "--max-image-pixels", "1280")
    assert len(list(out.glob("*.png"))) == len(NNUNET.samples(data, "test").samples)

    images = tmp_path / "any"
    images.mkdir()
    tests = sorted((work / "car" / "test").glob("*.jpg"))
    shutil.copy(tests[0], images / "a.jpg")
    with Image.open(tests[1]) as image:
        image.resize((96, 64)).save(images / "b.jpg")
    with pytest.raises(DataError, match="^" + re.escape(f"{images / 'b.jpg'}: image of 96x64 (WxH) = 6144 pixels is over "
                                                        "the cap of 1536 (raise it with --max-image-pixels)") + "$"):
        _submit(work, "--runs", str(work / "runs" / "car"), "--data-dir", str(work / "car"), "--images", str(images),
                "--out", str(tmp_path / "car"), "--max-image-pixels", "1536")  # the train views' 48 x 32
    assert not (tmp_path / "car").exists()


def test_image_input_goes_through_fold_models_and_tta(work):
    run = TrainedRun.load(work / "runs" / "car")
    data = work / "car"
    sample = CARVANA.samples(data, "test").samples[0]
    image = ImageInput.of(sample.id, CARVANA.read_image(sample, CARVANA.describe(data)))
    plain = RunPredictor(run, None, "test", (), cache_dir=run.cache_dir())
    flipped = RunPredictor(run, None, "test", ("hflip",), cache_dir=run.cache_dir())
    assert plain.predict(image).shape == (1, 32, 48)
    mirrored = np.flip(plain.predict(flip_volume(image, -1)), -1)
    assert np.allclose(flipped.predict(image), (plain.predict(image) + mirrored) / 2, atol=1e-6)
    with torch.no_grad():
        next(plain.folds[0].model.parameters()).fill_(float("nan"))
    with pytest.raises(DataError, match=f"non-finite values for {sample.id}"):
        plain.predict(image)

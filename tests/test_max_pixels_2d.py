"""--max-image-pixels on 2D data: every format reads with the cap it is given (detect_format(max_pixels=)),
and src.prepare, src.score and src.make_folds pass the user's cap to every image, label, mask and header
read (src.submit: tests/test_submit_2d.py). An image over the cap is a one-line error naming it and the cap."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src import make_folds, prepare, score
from src.core.errors import DataError, run_cli
from src.data.formats import detect_format, get_format, with_max_pixels
from src.data.formats.base import Sample, image_size, read_image_file
from src.data.formats.submission import write_label_image
from src.data.layout import MAX_IMAGE_PIXELS
from src.metrics.scoring2d import open_masks
from tests.expect import tiny_sets

TINY = {"carvana": dict(cars=2, test_cars=1, views=2, size=(64, 48)),
        "ebhi": dict(images=12, unlabelled=0, size=(40, 32)),
        "nnunet": dict(cases=3, test_cases=1, channels=2, classes=2, size=(40, 32))}
PIXELS = {fmt: options["size"][0] * options["size"][1] for fmt, options in TINY.items()}
FORMATS = list(TINY)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    return tiny_sets(tmp_path_factory.mktemp("maxpix"), TINY)


def _cli_error(main, args: list, capsys) -> str:
    """The one line a command prints for its DataError (exit code 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [str(a) for a in args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _over_the_cap(message: str, root: Path, cap: int) -> None:
    """`message` names a file of the data folder `root` and the cap."""
    assert f"is over the cap of {cap} (raise it with --max-image-pixels)" in message, message
    named = re.match(r"error: (.+?): image of", message)
    assert named and Path(named.group(1)).is_relative_to(root) and Path(named.group(1)).is_file(), message


# ---- the formats ----------------------------------------------------------------------------------------------
def test_detect_format_gives_each_2d_format_the_cap(sets, tiny_dataset):
    for fmt in FORMATS:
        assert detect_format(sets[fmt]).max_pixels == MAX_IMAGE_PIXELS
        capped = detect_format(sets[fmt], max_pixels=123)
        assert capped.name == fmt and capped.max_pixels == 123
        assert detect_format(sets[fmt], fmt, 77).max_pixels == 77
        assert get_format(fmt).max_pixels == MAX_IMAGE_PIXELS  # the module's FORMAT is left as it was
    gi = detect_format(tiny_dataset(train=[(1, 0, 16, 16, 2)]).root, max_pixels=5)
    assert gi is get_format("gi")  # the GI slices are capped by scan_split
    with pytest.raises(DataError, match=r"^--max-image-pixels 0: must be at least 1$"):
        detect_format(sets["ebhi"], max_pixels=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_image_and_label_read_honours_the_cap(sets, fmt):
    root, cap = sets[fmt], PIXELS[fmt]
    at_cap = detect_format(root, max_pixels=cap)
    description = at_cap.describe(root)
    sample = at_cap.samples(root, "train").samples[0]
    assert at_cap.read_image(sample, description).shape[:2] == at_cap.read_label(sample, description).shape
    below = with_max_pixels(at_cap, cap - 1)
    for read in (below.read_image, below.read_label):
        with pytest.raises(DataError, match=f"over the cap of {cap - 1} ") as info:
            read(sample, description)
        assert "\n" not in str(info.value) and str(sample.images[0].parent.parent) in str(info.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_label_over_the_cap_is_named_before_its_size_is_compared(sets, fmt, tmp_path):
    """A label (Carvana's GIF mask) larger than its image: the cap names the label, before any size check."""
    root, cap = sets[fmt], PIXELS[fmt]
    capped = detect_format(root, max_pixels=cap)
    description = capped.describe(root)
    sample = capped.samples(root, "train").samples[0]
    width, height = TINY[fmt]["size"]
    big = tmp_path / f"big{sample.label.suffix}"
    Image.fromarray(np.zeros((height + 1, width), np.uint8), "P" if fmt == "carvana" else "L").save(big)
    with pytest.raises(DataError) as info:
        capped.read_label(Sample(sample.id, sample.images, label=big), description)
    assert str(info.value) == (f"{big}: image of {width}x{height + 1} (WxH) = {width * (height + 1)} pixels is over "
                               f"the cap of {cap} (raise it with --max-image-pixels)")


def test_headers_are_capped_too(sets):
    root = sets["carvana"]
    image = min((root / "train").glob("*.jpg"))
    assert image_size(image, PIXELS["carvana"]) == (48, 64)
    with pytest.raises(DataError, match=re.escape(f"{image}: image of 64x48 (WxH) = 3072 pixels is over the cap of 3071")):
        image_size(image, 3071)
    with pytest.raises(DataError, match=re.escape(f"{image}: image of 64x48 (WxH) = 3072 pixels is over the cap of 100")):
        with_max_pixels(get_format("carvana"), 100).describe(root)  # the header of the first train image
    capped = with_max_pixels(get_format("carvana"), 3071)
    description = get_format("carvana").describe(root)
    sample = get_format("carvana").samples(root, "train").samples[0]
    masks = open_masks(root / "train_masks.csv", capped, description)  # an RLE is decoded at its image's size
    with pytest.raises(DataError, match=re.escape(f"{sample.images[0]}: image of 64x48 (WxH)")):
        masks.read(sample)
    assert open_masks(root / "train_masks.csv", get_format("carvana"), description).read(sample).shape == (48, 64)


def test_a_cap_above_pillows_own_limit_is_the_one_that_counts(sets, monkeypatch):
    """Pillow refuses images above Image.MAX_IMAGE_PIXELS on opening; the user's cap decides instead."""
    path = min(sets["ebhi"].rglob("image/*.png"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert read_image_file(path, 10 ** 6).shape[:2] == (32, 40)
    assert Image.MAX_IMAGE_PIXELS == 10 ** 6  # raised to the cap, never lowered
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match=re.escape(f"{path}: image over the cap of 200 pixels (raise it with "
                                                  "--max-image-pixels; ")):
        read_image_file(path, 200)  # over twice Pillow's limit (raised to 200): Pillow's refusal, as the cap's


# ---- the commands ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_prepare_honours_the_cap(sets, fmt, tmp_path, capsys):
    root, cap = sets[fmt], PIXELS[fmt]
    err = _cli_error(prepare.main, ["--data-dir", root, "--cache-dir", tmp_path / "low", "--max-image-pixels", cap - 1],
                     capsys)
    _over_the_cap(err, root, cap - 1)
    assert prepare.main(["--data-dir", str(root), "--cache-dir", str(tmp_path / "at"), "--max-image-pixels", str(cap)]) == 0
    n = len(get_format(fmt).samples(root, "train").samples)
    assert f"{n} images written" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", FORMATS)
def test_score_honours_the_cap(sets, fmt, tmp_path, capsys):
    root, cap = sets[fmt], PIXELS[fmt]
    fmt_ = get_format(fmt)
    description = fmt_.describe(root)
    if fmt == "carvana":
        pred = root / "train_masks.csv"
    else:
        pred = tmp_path / "pred"
        for sample in fmt_.samples(root, "train").samples:
            write_label_image(pred, sample.id, fmt_.read_label(sample, description), ".png", fmt_.label_scale)
    args = ["--data-dir", root, "--pred", pred, "--json"]
    _over_the_cap(_cli_error(score.main, [*args, "--max-image-pixels", cap - 1], capsys), root, cap - 1)
    assert score.main([str(a) for a in [*args, "--max-image-pixels", cap]]) == 0
    assert json.loads(capsys.readouterr().out)["dice"] == 1.0


def test_score_refuses_a_cap_below_one_pixel_on_2d_data(sets, capsys):
    err = _cli_error(score.main, ["--data-dir", sets["nnunet"], "--pred", sets["nnunet"] / "labelsTr",
                                  "--max-image-pixels", 0], capsys)
    assert err == "error: --max-image-pixels 0: must be at least 1"


def test_make_folds_honours_the_cap(sets, tmp_path, capsys):
    """EBHI's description decodes the first image (its channel count): make_folds reads it with the cap."""
    root, cap = sets["ebhi"], PIXELS["ebhi"]
    args = ["--data-dir", root, "--n-folds", 2, "--out", tmp_path / "folds.csv"]
    _over_the_cap(_cli_error(make_folds.main, [*args, "--max-image-pixels", cap - 1], capsys), root, cap - 1)
    assert not (tmp_path / "folds.csv").exists()
    assert make_folds.main([str(a) for a in [*args, "--max-image-pixels", cap]]) == 0
    assert (tmp_path / "folds.csv").is_file()

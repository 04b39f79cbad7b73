"""Recipes on 2D data: the format from [data] (or the folder), its generator's keys, the data marker,
the submission and truth paths of each format, and an [ablation] study as a step."""
import json
import shlex

import pytest

from src.core.errors import DataError
from src.data.synthetic2d import generate_dataset
from src.orchestration.recipes import load_recipe, outputs, plan
from src.pipeline import main as pipeline_main

CARVANA = """
name = "cv"
[data]
dir = "{root}/cv"
format = "carvana"
synthetic = {{ cars = 3, test_cars = 1, views = 4, size = "64x48" }}
[folds]
n_folds = 3
[[models]]
name = "u"
stage = "seg2d"
arch = "unet_tiny"
folds = [0, 1, 2]
img_size = 32
tta = "hflip"
[ensemble]
passes = 1
"""

ABLATION = """
name = "abl"
[data]
dir = "{root}/ebhi"
format = "ebhi"
synthetic = {{ images = 30, size = "64x64" }}
[ablation]
base = "--arch unet_tiny --epochs 1 --img-size 32"
vary = ["lr=1e-3,3e-3"]
split = "random:0.8"
repeats = 2
out = "{root}/study"
"""


def _write(tmp_path, text, name="r.toml"):
    path = tmp_path / name
    path.write_text(text.format(root=tmp_path))
    return path


def test_carvana_recipe_forces_its_format_and_waits_on_its_marker(tmp_path):
    recipe = load_recipe(_write(tmp_path, CARVANA))
    steps = {s.name: s for s in plan(recipe, str(tmp_path / "runs"))}
    synthetic, folds, cache = steps["synthetic data"], steps["folds"], steps["cache"]
    assert synthetic.argv[synthetic.argv.index("--format") + 1] == "carvana"
    assert synthetic.argv[synthetic.argv.index("--size") + 1] == "64x48"
    marker = f"{tmp_path}/cv/train_masks.csv"
    assert synthetic.outputs == (marker,) and folds.inputs == (marker,) and cache.inputs == (marker,)
    assert "--format" in folds.argv and "--format" in cache.argv
    out = outputs(recipe, str(tmp_path / "runs"))
    assert out.submission == "submissions/cv.csv" and out.truth == f"{tmp_path}/cv_test_truth.csv"
    assert [s for s in steps if s.startswith("train")] == ["train u fold 0", "train u fold 1", "train u fold 2"]
    assert {"ensemble", "submission", "score", "report"} <= set(steps)
    predict, ensemble = steps["predict u oof"], steps["ensemble"]  # tta: the OOF predicted again, then tuned on
    assert predict.argv[predict.argv.index("--tta") + 1] == "hflip" and predict.module == "src.predict"
    assert predict.outputs[0] in ensemble.inputs and set(predict.inputs) < set(ensemble.inputs)
    assert all("--tta" not in s.argv for name, s in steps.items() if name.startswith("train"))
    with pytest.raises(DataError, match=r"\[\[models\]\] 1 \(u\): --tta flop"):
        load_recipe(_write(tmp_path, CARVANA.replace('tta = "hflip"', 'tta = "flop"'), "bad.toml"))


def test_label_image_formats_submit_a_folder_and_nnunet_truth_is_a_folder(tmp_path):
    text = CARVANA.replace('format = "carvana"', 'format = "nnunet"').replace(
        'cars = 3, test_cars = 1, views = 4, size = "64x48"', 'cases = 4, test_cases = 2, size = "64x64"')
    recipe = load_recipe(_write(tmp_path, text))
    out = outputs(recipe, "runs")
    assert out.submission == "submissions/cv" and out.truth == f"{tmp_path}/cv_test_truth"
    assert plan(recipe, "runs")[0].outputs == (f"{tmp_path}/cv/dataset.json",)
    no_test = load_recipe(_write(tmp_path, text.replace("test_cases = 2", "test_cases = 0"), "n.toml"))
    assert outputs(no_test, "runs").truth is None


def test_the_format_is_detected_from_an_existing_folder(tmp_path):
    generate_dataset("ebhi", tmp_path / "cv", images=12, size=(32, 32))
    text = CARVANA.replace('format = "carvana"\n', "").replace(
        'synthetic = {{ cars = 3, test_cars = 1, views = 4, size = "64x48" }}\n', "")
    recipe = load_recipe(_write(tmp_path, text))
    assert recipe.format == "ebhi" and recipe.data_marker == f"{tmp_path}/cv"
    assert plan(recipe, "runs")[0].inputs == (f"{tmp_path}/cv",)  # the folder stands for EBHI data


def test_an_ablation_recipe_plans_the_study_on_its_data(tmp_path):
    recipe = load_recipe(_write(tmp_path, ABLATION))
    steps = plan(recipe, "runs")
    assert [s.name for s in steps] == ["synthetic data", "ablation"]
    study = steps[1]
    assert study.module == "src.ablate" and study.outputs == (f"{tmp_path}/study/ablation.md",)
    assert study.inputs == (f"{tmp_path}/ebhi",)
    base = shlex.split(study.argv[study.argv.index("--base") + 1])
    assert base[-2:] == ["--data-dir", f"{tmp_path}/ebhi"] and "--arch" in base
    assert study.argv[study.argv.index("--vary") + 1] == "lr=1e-3,3e-3"
    assert study.argv[study.argv.index("--split") + 1] == "random:0.8"


@pytest.mark.parametrize("change, message", [
    (('format = "ebhi"', 'format = "pascal"'), r"\[data\] format = 'pascal': known formats are gi, carvana"),
    (("images = 30", "cars = 3"), r"\[data.synthetic\]: --cars does not apply to --format ebhi"),
    (('base = "--arch unet_tiny --epochs 1 --img-size 32"\n', ""), r"\[ablation\] lacks the required key 'base'"),
    (('vary = ["lr=1e-3,3e-3"]', "vary = [1]"), r"\[ablation\] vary: expected a list of texts"),
    (('split = "random:0.8"', "splits = 2"), r"\[ablation\] unknown key 'splits'"),
    (("[ablation]", "[studies]"), r"unknown key 'studies'"),
])
def test_recipe_errors_on_2d_data_are_one_line(tmp_path, change, message):
    with pytest.raises(DataError, match=message):
        load_recipe(_write(tmp_path, ABLATION.replace(*change)))


def test_models_need_folds_and_a_recipe_needs_models_or_a_study(tmp_path):
    with pytest.raises(DataError, match="lacks the required key 'folds'"):
        load_recipe(_write(tmp_path, CARVANA.replace("[folds]\nn_folds = 3\n", "")))
    nothing = ABLATION.split("[ablation]")[0]
    with pytest.raises(DataError, match=r"no \[\[models\]\] and no \[ablation\]"):
        load_recipe(_write(tmp_path, nothing))


GATED = """
name = "gated"
[data]
dir = "{root}/Dataset503_Gated"
format = "nnunet"
synthetic = {{ cases = 10, test_cases = 2, size = "32x32" }}
[folds]
n_folds = 2
[[models]]
name = "seg"
stage = "seg2d"
arch = "unet_tiny"
folds = [0, 1]
{common}
[[models]]
name = "cls"
stage = "cls"
arch = "cls_tiny"
folds = [0, 1]
{common}
[ensemble]
gate = "cls"
passes = 1
[submit]
out = "{root}/sub"
device = "cpu"
[report]
out = "{root}/report"
"""


def test_a_2d_recipe_with_a_classifier_gate_runs_end_to_end(tmp_path, monkeypatch, capsys):
    """nnU-Net 2D data: a segmenter and a presence classifier trained on two folds, the ensemble offered the
    classifier as its gate, the submission of label images scored against the synthetic truth, the report."""
    monkeypatch.chdir(tmp_path)  # folds/ and cache/ of the recipe's defaults
    common = 'img_size = 24\nepochs = 1\nbatch_size = 4\nworkers = 0\ndevice = "cpu"'
    path = tmp_path / "gated.toml"
    path.write_text(GATED.format(root=tmp_path, common=common))
    steps = {s.name: s for s in plan(load_recipe(path), "runs")}
    assert steps["train cls fold 0"].argv[steps["train cls fold 0"].argv.index("--stage") + 1] == "cls"
    assert steps["ensemble"].argv[steps["ensemble"].argv.index("--gate") + 1] == "runs/cls"
    assert pipeline_main([str(path), "--runs-dir", "runs"]) == 0
    record = json.loads((tmp_path / "runs" / "ensemble_gated.json").read_text())
    assert record["dims"] == "2d" and record["oof"]["gate"] == "runs/cls" and list(record["oof"]["stages"]) == ["seg"]
    assert record["gate"] in (None, "runs/cls") and bool(record["gate"]) == any(record["params"]["gate_threshold"])
    assert sorted(p.name for p in (tmp_path / "sub").glob("*.png")) == ["case_010.png", "case_011.png"]
    assert 0.0 <= json.loads((tmp_path / "sub.score.json").read_text())["dice"] <= 1.0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Presence precision-recall" in page and "Ensemble" in page

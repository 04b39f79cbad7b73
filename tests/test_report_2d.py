"""The HTML run report on 2D runs: one tiny trained fold of a synthetic EBHI-Seg set (RGB, one class, categories)
and of an nnU-Net 2D set (two gray channels, two classes), reported with and without a tuned 2D ensemble
record; the tables are src.metrics.overlap's on the OOF files, the figures decode, GI and 2D runs never mix."""
import html
import json
import re

import cv2
import numpy as np
import pandas as pd
import pytest

from src.core.artifacts import load_prediction
from src.core.errors import DataError
from src.data.folds import make_folds
from src.data.image_cache import ImageCache
from src.data.image_samples import label_map, one_hot
from src.data.synthetic2d import generate_dataset
from src.engine.config import Seg2DConfig
from src.engine.run import train
from src.ensembling.ensemble_file import EnsembleMember, write_ensemble_file
from src.ensembling.params import EnsembleParams
from src.ensembling.tune import TuneOptions, tune
from src.inference.settings import PredictSettings
from src.metrics.overlap import image_table, summary
from src.report import main
from src.reporting.build import build_report
from src.reporting.oof import image_panel
from src.reporting.options import ReportOptions
from src.reporting.page import cell
from src.reporting.scoring import extremes

CATEGORIES = ("Adenocarcinoma", "High-grade IN", "Low-grade IN", "Normal", "Polyp", "Serrated adenoma")
def train_fold(root, data, name) -> None:
    make_folds(root / data, n_folds=2, seed=0).to_csv(root / f"{name}_folds.csv", index=False)
    train(Seg2DConfig(data_dir=str(root / data), cache_dir=str(root / f"cache_{name}"),
                      folds_csv=str(root / f"{name}_folds.csv"), out=str(root / "runs"), name=name, arch="unet_tiny",
                      img_size=32, batch_size=4, epochs=1, workers=0, device="cpu"))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("report2d")
    generate_dataset("ebhi", root / "ebhi", images=12, unlabelled=0, size=(40, 32))
    generate_dataset("nnunet", root / "Dataset501_Tiny", cases=8, test_cases=0, size=(32, 32))
    train_fold(root, "ebhi", "ebhi")
    train_fold(root, "Dataset501_Tiny", "nn")
    tune(TuneOptions(runs=(root / "runs" / "ebhi",), out=root / "ensemble2d.json", passes=1), log=lambda _: None)
    reports = {"ebhi": build_report(ReportOptions(runs=[root / "runs" / "ebhi"], out=root / "reports" / "ebhi",
                                                  ensemble=root / "ensemble2d.json")),
               "nn": build_report(ReportOptions(runs=[root / "runs" / "nn"], out=root / "reports" / "nn"))}
    return root, reports


def expected_oof(root, name) -> pd.DataFrame:
    """overlap.image_table of the run's OOF files at its threshold, computed here without the report."""
    fold = root / "runs" / name / "fold0"
    cache = ImageCache(root / f"cache_{name}")
    strata = cache.table().set_index("key")["stratum"].fillna("")
    cut = json.loads((fold / "config.json").read_text())["config"]["threshold"]
    pairs = []
    for path in sorted((fold / "oof").glob("*.npy")):
        pairs.append((path.stem, strata[path.stem], label_map(load_prediction(path, image=True), cut),
                      np.asarray(cache.load(path.stem)[1])))
    return image_table(pairs, cache.description.labels)


def headings(page: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r"<h[123]>(.*?)</h[123]>", page)]


@pytest.mark.parametrize("name", ["ebhi", "nn"])
def test_oof_table_is_overlap_summary_of_the_oof_files(work, name):
    root, reports = work
    section = reports[name].runs[0].images
    expected = summary(expected_oof(root, name))
    pd.testing.assert_frame_equal(section.result.summary, expected)
    page = html.unescape(reports[name].index.read_text())
    for row in expected.itertuples(index=False):
        cells = [str(row.stratum), str(row.images), *(cell(getattr(row, s)) for s in ("dice", "jaccard", "precision",
                                                                                       "recall"))]
        assert "<tr><td>" + "</td><td>".join(cells) + "</td></tr>" in page
    assert section.result.table["dice"].is_monotonic_increasing and len(section.result.table) == expected["images"][0]


def test_ebhi_page_names_the_categories_and_its_sections(work):
    root, reports = work
    page = reports["ebhi"].index.read_text()
    assert reports["ebhi"].runs[0].images.table.columns[0] == "category"
    for category in CATEGORIES:
        assert f"<tr><td>{html.escape(category)}</td>" in page, category
    assert headings(page) == ["Run report: ebhi", "Summary", "Run ebhi", "Training curves",
                              "Out-of-fold scores per image", "Worst and best images",  # one class: no Dice per class
                              f"Ensemble {root / 'ensemble2d.json'}",
                              *(["Final choice"] if "choice" in json.loads((root / "ensemble2d.json").read_text())[
                                  "scores"] else []), "Parameters"]  # one trained fold: no held-out choice
    assert "Dataset ebhi: class foreground, channels R, G, B." in page
    done = json.loads((root / "runs" / "ebhi" / "fold0" / "done.json").read_text())
    assert f"<td>seg2d</td><td>unet_tiny</td><td>{done['best_score']:.4f}</td>" in page  # the summary table


def test_nnunet_classes_come_from_the_description(work):
    root, reports = work
    section = reports["nn"].runs[0].images
    labels = ImageCache(root / "cache_nn").description.labels
    assert len(labels) == 2 and section.labels == labels and section.table.columns[0] == "stratum"
    rows = expected_oof(root, "nn")
    per_class = rows.groupby("class")["dice"].mean()
    assert list(section.result.class_dice.index) == list(labels)
    np.testing.assert_allclose(section.result.class_dice.to_numpy(), per_class[list(labels)].to_numpy())
    page = reports["nn"].index.read_text()
    assert headings(page)[4:] == ["Out-of-fold scores per image", "Dice per class", "Worst and best images"]
    assert "<h2>Ensemble" not in page and "<tr><td>all</td>" in page


def test_figures_written_and_decoded(work):
    _, reports = work
    for name, expected in (("ebhi", ["01_ebhi_curves.png", "01_ebhi_worst_best.png"]),
                           ("nn", ["01_nn_curves.png", "01_nn_class_dice.png", "01_nn_worst_best.png"])):
        report = reports[name]
        folder = report.index.parent
        assert report.figures == expected
        assert sorted(re.findall(r'<img src="([^"]+)"', report.index.read_text())) == sorted(expected)
        assert sorted(p.name for p in folder.glob("*.png")) == sorted(expected)
        for figure in expected:
            assert cv2.imread(str(folder / figure)) is not None, figure


def test_worst_and_best_images_are_the_extremes_with_their_contours(work):
    root, reports = work
    for name, rgb in (("ebhi", True), ("nn", False)):
        run_section = reports[name].runs[0]
        table = run_section.images.result.table
        picked = extremes(table, "key")
        assert [label for label, _ in picked] == ["worst 1", "worst 2", "best 1", "best 2"]
        assert [key for _, key in picked] == [*table["key"].iloc[:2], *table["key"].iloc[::-1][:2]]
        cache = ImageCache(root / f"cache_{name}")
        key = picked[0][1]
        caption, image, truth, pred = image_panel(run_section.run, cache, key, "worst 1")
        pixels, mask = cache.load(key)
        assert image.shape == (pixels.shape[:2] + (3,) if rgb else pixels.shape[:2])  # RGB as is, else channel 0
        assert 0.0 <= image.min() and image.max() <= 1.0
        np.testing.assert_array_equal(truth, one_hot(np.asarray(mask), cache.description.n_classes) > 0)
        assert pred.shape == truth.shape and pred.dtype == bool


def test_2d_ensemble_scores(work):
    root, reports = work
    page = html.unescape(reports["ebhi"].index.read_text())
    record = json.loads((root / "ensemble2d.json").read_text())
    scores, model = record["scores"], record["scores"]["models"]["ebhi"]
    assert "<tr><th>name</th><th>score</th><th>dice</th><th>jaccard</th></tr>" in page and "hausdorff" not in page
    texts = [f"<td>models / ebhi</td><td>{cell(model['score'])}</td><td>{cell(model['dice'])}</td>"
             f"<td>{cell(model['jaccard'])}</td>",
             f"<td>tuned_in_sample</td><td>{cell(scores['tuned_in_sample']['score'])}</td>",
             f"<td>written / in_sample</td><td>{cell(scores['written']['in_sample']['score'])}</td>",
             f"Tuned on the out-of-fold predictions of {record['oof']['images']} images (folds 0), metric dice",
             *(f"<td>{key}</td>" for key in record["params"] if key != "weights")]
    for text in texts:
        assert text in page, text


def gi_run(root):
    """A GI run folder (its config only) whose cache has no description: GI case-days."""
    folder = root / "runs" / "gi" / "fold0"
    folder.mkdir(parents=True, exist_ok=True)
    config = {"stage": "seg2d", "arch": "tiny", "fold": "0", "data_dir": "nowhere", "cache_dir": str(root / "gi_cache"),
              "threshold": 0.5}
    (folder / "config.json").write_text(json.dumps({"config": config}))
    (folder / "done.json").write_text(json.dumps({"best_score": 0.5}))
    return folder.parent


def test_mixed_runs_and_ensembles_of_the_other_kind_are_refused(work, tmp_path):
    root, _ = work
    gi = gi_run(tmp_path)
    with pytest.raises(DataError, match=r"--runs: .*ebhi was trained on 2D images .* and .*gi on GI case-days") as err:
        main(["--runs", str(root / "runs" / "ebhi"), str(gi), "--out", str(tmp_path / "mixed")])
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="an ensemble of 2D images, the runs are of GI case-days"):
        build_report(ReportOptions(runs=[gi], out=tmp_path / "gi", ensemble=root / "ensemble2d.json"))
    member = EnsembleMember("g", str(gi), "seg2d", "2d", ("0",), PredictSettings())
    write_ensemble_file(tmp_path / "gi_ensemble.json", [member], [], None, None, EnsembleParams.plain_mean({"g": "2d"}))
    with pytest.raises(DataError, match="an ensemble of GI case-days, the runs are of 2D images"):
        build_report(ReportOptions(runs=[root / "runs" / "nn"], out=tmp_path / "nn", ensemble=tmp_path / "gi_ensemble.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gi_ensemble.json", "runs"]  # no report written

"""The HTML run report on hand-made runs (no training): page, figures, rankings, template, atomicity, browser."""
import html
import json
import re
import shutil
import subprocess

import cv2
import numpy as np
import pandas as pd
import pytest

from src.core.artifacts import REPORT_PAGE
from src.core.atomic import save_npy_atomic
from src.core.errors import DataError
from src.data.layout import slice_id
from src.data.volumes import write_case_day
from src.metrics.competition import dice_rows, score_volumes
from src.report import main
from src.reporting.build import build_report
from src.reporting.options import ReportOptions
from src.reporting.page import tabulate
from src.reporting.scoring import case_day_score

CASE_DAYS = ("case1_day0", "case1_day2", "case3_day1", "case4_day5")
FOLD_OF = {"case1_day0": "0", "case1_day2": "0", "case3_day1": "1", "case4_day5": "1"}
SHAPE = (6, 40, 48)  # Z, H, W


def truth_mask(rng: np.random.Generator) -> np.ndarray:
    """Rectangles per class on a few slices; some slices and rows empty."""
    z_n, h, w = SHAPE
    mask = np.zeros((z_n, 3, h, w), np.uint8)
    for c in range(3):
        y, x = rng.integers(2, h - 14), rng.integers(2, w - 16)
        for z in range(c, z_n - 1):
            mask[z, c, y:y + 6 + z, x:x + 8 + z] = 1
    return mask


def prediction(case_day: str, truth: np.ndarray) -> np.ndarray:
    """Probabilities: perfect, empty, shifted, and one class missing, by case-day."""
    probs = truth.astype(np.float32) * 0.9
    if case_day == "case1_day2":
        probs[:] = 0.05
    elif case_day == "case3_day1":
        probs = np.roll(probs, 3, axis=3)
    elif case_day == "case4_day5":
        probs[:, 1] = 0.0
    return probs.astype(np.float16)


def write_fold(run, fold, stage, log, done, threshold=0.5):
    folder = run / f"fold{fold}"
    folder.mkdir(parents=True)
    config = {"stage": stage, "arch": "tiny", "fold": fold, "data_dir": "nowhere", "cache_dir": "", "threshold": threshold}
    (folder / "config.json").write_text(json.dumps({"config": config}))
    log.to_csv(folder / "log.csv", index=False)
    if done is not None:
        (folder / "done.json").write_text(json.dumps(done))
    return folder


def curve_log(rng, columns=("val_score", "val_dice", "val_hausdorff")) -> pd.DataFrame:
    table = {"epoch": range(3), "train_loss": rng.uniform(0.2, 1.0, 3)}
    return pd.DataFrame({**table, **{c: rng.uniform(0, 1, 3) for c in columns}})


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    masks = {}
    for cd in CASE_DAYS:
        masks[cd] = truth_mask(rng)
        image = rng.integers(0, 3000, SHAPE, dtype=np.uint16)
        meta = {"ids": [slice_id(cd, z + 1) for z in range(SHAPE[0])], "sx": 1.5, "sy": 1.5}
        write_case_day(root / "cache", "train", cd, image, masks[cd], meta)
    seg = root / "runs" / "seg"
    logs = {f: curve_log(rng) for f in ("0", "1")}
    write_fold(seg, "0", "seg2d", logs["0"], {"best_score": 0.75, "best_epoch": 1, "epochs_run": 3})
    write_fold(seg, "1", "seg2d", logs["1"], None)  # unfinished: best from log.csv
    for cd in CASE_DAYS:
        save_npy_atomic(seg / f"fold{FOLD_OF[cd]}" / "oof" / f"{cd}.npy", prediction(cd, masks[cd]))
    fold0 = [cd for cd in CASE_DAYS if FOLD_OF[cd] == "0"]  # fold 0 has oof_scores.csv, fold 1 is recomputed
    score_volumes((cd, prediction(cd, masks[cd]) > 0.5, masks[cd] > 0) for cd in fold0).per_case_day.to_csv(
        seg / "fold0" / "oof_scores.csv", index=False)
    gate = root / "runs" / "gate"
    write_fold(gate, "0", "cls", curve_log(rng, ("val_ap",)), {"best_score": 0.9, "best_epoch": 2, "epochs_run": 3})
    for cd in CASE_DAYS:
        presence = masks[cd].any(axis=(2, 3)).astype(np.float32)
        probs = 0.3 + 0.6 * presence
        probs[:, 2] = 1.0 - probs[:, 2]  # stomach ranked backwards: AP below 1
        save_npy_atomic(gate / "fold0" / "oof" / f"{cd}.npy", probs.astype(np.float16))
    scores = {"models": {"seg": {"score": 0.81, "dice": 0.7, "hausdorff": 0.12}},
              "plain_mean": {"score": 0.8, "dice": 0.69},  # hausdorff missing on purpose
              "held_out_by_fold": {"0": 0.79}, "gap": 0.011,
              "contributions": [{"component": "thresholds", "score": 0.7654, "delta": 0.0246, "note": "thresholds 0.5"},
                                {"component": "crop", "score": None, "delta": None, "note": "not used"}],
              "choice": {"written": "seg alone @0.5", "case_days": 4, "interval": "95% bootstrap over case-days",
                         "candidates": {"seg alone @0.5": {"score": 0.81, "low": 0.7712, "high": 0.85, "delta": 0.0,
                                                           "delta_low": 0.0, "delta_high": 0.0},
                                        "tuned ensemble": {"score": 0.79, "low": 0.75, "high": 0.83, "delta": -0.02,
                                                           "delta_low": -0.0431, "delta_high": 0.004}}},
              "written": {"name": "seg alone @0.5", "in_sample": {"score": 0.81}, "held_out": {"score": 0.81}}}
    (root / "ensemble.json").write_text(json.dumps({
        "version": 2, "runs": [{"name": "seg", "path": str(seg), "stage": "seg2d", "group": "2d", "folds": [], "predict": {}}],
        "scores": scores,
        "params": {"weights": {"seg": [1, 1, 1]}, "groups": {"seg": "2d"}, "thresholds": [0.45] * 3}}))
    report = build_report(ReportOptions(runs=[seg, gate], out=root / "reports" / "r", ensemble=root / "ensemble.json",
                                        cache_dir=root / "cache", allow_incomplete=True))
    return root, masks, logs, report


def image_sources(index) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', index.read_text())


def test_page_references_every_figure_and_each_decodes(work):
    root, _, _, report = work
    folder = report.index.parent
    assert report.index.exists()
    assert sorted(image_sources(report.index)) == sorted(report.figures) == sorted(p.name for p in folder.glob("*.png"))
    assert len(report.figures) >= 8  # 2 curves, case-days, class dice, 4 overlays, PR curve
    for name in report.figures:
        assert cv2.imread(str(folder / name)) is not None, name
    assert sorted(p.name for p in folder.parent.iterdir()) == ["r"]  # no temporary sibling left
    assert all(re.search(r'alt="[^"]+"', tag) for tag in re.findall(r"<img [^>]+>", report.index.read_text()))


def test_case_day_table_is_the_metric_ranked_worst_first(work):
    _, masks, _, report = work
    seg = report.runs[0].segmentation.result
    assert seg.sources == {"0": "oof_scores.csv", "1": "recomputed"}
    expected = score_volumes((cd, prediction(cd, masks[cd]) > 0.5, masks[cd] > 0) for cd in CASE_DAYS).per_case_day
    expected = expected.assign(score=case_day_score(expected)).sort_values("score")
    assert list(seg.table["case_day"]) == list(expected["case_day"])
    np.testing.assert_allclose(seg.table["score"], expected["score"])
    assert seg.table["case_day"].iloc[0] == "case1_day2" and seg.table["case_day"].iloc[-1] == "case1_day0"
    overlays = [n for n in report.figures if "worst" in n or "best" in n]
    assert any("worst1" in n and "case1_day2" in n for n in overlays)
    assert any("best1" in n and "case1_day0" in n for n in overlays) and len(overlays) == 4


def test_class_dice_is_nanmean_over_all_rows(work):
    _, masks, _, report = work
    rows = np.concatenate([dice_rows(prediction(cd, masks[cd]) > 0.5, masks[cd] > 0) for cd in CASE_DAYS])
    class_dice = report.runs[0].segmentation.result.class_dice
    np.testing.assert_allclose(class_dice.to_numpy(), np.nanmean(rows, axis=0))
    assert class_dice["small_bowel"] < class_dice["large_bowel"]  # missing in one case-day


def test_summary_classifier_and_ensemble_sections(work):
    _, _, logs, report = work
    page = report.index.read_text()
    assert "0.7500" in page and f"{logs['1']['val_score'].max():.4f}" in page  # done.json, else log.csv
    assert f"{np.mean([0.75, logs['1']['val_score'].max()]):.4f}" in page
    ap = report.runs[1].presence.table.set_index("class")["ap"]
    assert ap["large_bowel"] == pytest.approx(1.0) and ap["stomach"] < 0.9
    assert report.runs[1].segmentation is None and report.runs[0].presence is None
    for text in ("models / seg", "plain_mean", "held_out_by_fold / 0", "gap", "0.8100", "threshold",
                 "Held-out contribution", "<td>thresholds</td>", "0.7654", "0.0246", "<td>not used</td>"):
        assert text in page, text
    assert "'component'" not in html.unescape(page) and ">contributions<" not in page  # not walked as scores
    for text in ("Final choice", "4 case-days; 95% bootstrap over case-days", "<td>tuned ensemble</td>", "0.7712",
                 "-0.0431", "written / held_out"):
        assert text in page, text
    assert "candidates / " not in page  # the choice has its own table, not walked as scores


def headings(page: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r"<h[123]>(.*?)</h[123]>", page)]


def test_every_section_in_page_order(work):
    root, _, _, report = work
    assert headings(report.index.read_text()) == [
        "Run report: seg, gate", "Summary",
        "Run seg", "Training curves", "Score per case-day (out of fold)", "Dice per class", "Worst and best case-days",
        "Run gate", "Training curves", "Presence precision-recall (out of fold)",
        f"Ensemble {root / 'ensemble.json'}", "Held-out contribution", "Final choice", "Parameters"]
    page = report.index.read_text()
    assert page.count("<table>") == 7  # summary, presence, ensemble metrics and scalars, contribution, choice, parameters
    assert "4 case-days, worst first (fold 0: oof_scores.csv, fold 1: recomputed)." in page
    assert "at the run's threshold 0.5." in page and 'data-images-loaded' in page and "border-collapse" in page


def test_run_and_title_text_is_escaped_and_empty_sections_say_so(work, tmp_path, monkeypatch):
    """A run named <script>...: text on the page, never markup; a run without OOF and an ensemble without
    scores get their sentence; the template is found from any working directory."""
    root, _, _, _ = work
    name = "<script>alert(1)"
    run = tmp_path / "runs" / name
    shutil.copytree(root / "runs" / "gate", run, ignore=shutil.ignore_patterns("oof"))
    record = json.loads((root / "ensemble.json").read_text())
    del record["scores"]
    (tmp_path / "bare.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path)
    report = build_report(ReportOptions(runs=[run], out=tmp_path / "out", ensemble=tmp_path / "bare.json",
                                        cache_dir=root / "cache", title="<b>title</b> & <script>x</script>"))
    page = report.index.read_text()
    assert page.count("<script") == 1 and "<b>" not in page  # only the page's own image check
    assert "&lt;script&gt;alert(1)" in page
    assert "<h1>&lt;b&gt;title&lt;/b&gt; &amp; &lt;script&gt;x&lt;/script&gt;</h1>" in page
    assert report.figures == ["01__script_alert_1__curves.png"]
    assert f'alt="{html.escape(name)}: training loss' in page
    assert headings(page)[2:] == [f"Run {name}", "Training curves", f"Ensemble {tmp_path / 'bare.json'}", "Parameters"]
    assert "<p>No out-of-fold predictions (oof/*.npy) in this run.</p>" in page
    assert "<p>No scores table in this file (keys: version, runs, params).</p>" in page
    assert report.runs[0].presence is None and report.runs[0].segmentation is None


def test_table_cells_are_pandas_to_html_cells():
    """Floats to 4 decimals and NaN empty, whatever the column's dtype; anything else as str()."""
    table = pd.DataFrame({"name": ["a", None], "score": [0.81234, np.nan], "n": [3, 4], "mixed": [0.011, "s"],
                          "none": [None, None], "flag": [True, False]})
    expected = re.findall(r"<td>(.*?)</td>", table.to_html(index=False, na_rep="", float_format="{:.4f}".format))
    assert tabulate(table).columns == list(table.columns)
    assert [c for row in tabulate(table).rows for c in row] == expected == [
        "a", "0.8123", "3", "0.0110", "None", "True", "", "", "4", "s", "None", "False"]


def test_rebuild_replaces_and_failure_keeps_the_old_report(work, tmp_path):
    root, _, _, _ = work
    out = tmp_path / "out"
    build_report(ReportOptions(runs=[root / "runs" / "gate"], out=out, cache_dir=root / "cache"))
    (out / "stale.png").write_bytes(b"x")
    build_report(ReportOptions(runs=[root / "runs" / "gate"], out=out, cache_dir=root / "cache"))
    assert not (out / "stale.png").exists()
    before = sorted(p.name for p in out.iterdir())
    broken = tmp_path / "broken"
    shutil.copytree(root / "runs" / "seg", broken)
    save_npy_atomic(broken / "fold1" / "oof" / "case3_day1.npy", np.zeros((2, 3, 4, 4), np.float16))
    with pytest.raises(DataError, match=r"fold1: incomplete fold .* --allow-incomplete"):
        build_report(ReportOptions(runs=[broken], out=out, cache_dir=root / "cache"))  # fold 1 has no done marker
    with pytest.raises(DataError, match=r"case3_day1\.npy: OOF shape"):
        build_report(ReportOptions(runs=[broken], out=out, cache_dir=root / "cache", allow_incomplete=True))
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "out"]
    with pytest.raises(DataError, match="not a run folder"):
        main(["--runs", str(tmp_path), "--out", str(out)])


def test_cli_writes_report(work, tmp_path, capsys):
    root, _, _, _ = work
    assert main(["--runs", str(root / "runs" / "gate"), "--cache-dir", str(root / "cache"),
                 "--out", str(tmp_path / "cli")]) == 0
    assert REPORT_PAGE in capsys.readouterr().out and (tmp_path / "cli" / REPORT_PAGE).exists()


def chromium(*args, tmp_path):
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def test_page_renders_in_headless_chromium(work, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium; .ci/run installs it)")
    _, _, _, report = work
    url = report.index.resolve().as_uri()
    dom = chromium("--dump-dom", url, tmp_path=tmp_path).stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded, "the page's load script did not run"
    assert int(loaded.group(1)) == int(loaded.group(2)) == len(report.figures)
    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars", url, tmp_path=tmp_path)
    image = cv2.imread(str(shot))
    assert image is not None and image.std() > 10  # not blank


def test_training_curves_join_the_validated_epochs_of_a_sparse_log(tmp_path, monkeypatch):
    """--val-every leaves val_* empty on the epochs between validations: the curve joins the others."""
    import matplotlib.axes

    from src.reporting.figures import training_curves

    lines = []  # (x, y) of every plotted line
    original = matplotlib.axes.Axes.plot

    def record(ax, x, y, *args, **kwargs):
        lines.append((list(x), list(y)))
        return original(ax, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", record)
    log = pd.DataFrame({"epoch": [0, 1, 2, 3], "train_loss": [0.9, 0.7, 0.6, 0.5],
                        "val_score": [np.nan, 0.4, np.nan, 0.6]})
    training_curves({"0": log}, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert ([2, 4], [0.4, 0.6]) in lines and ([1, 2, 3, 4], [0.9, 0.7, 0.6, 0.5]) in lines

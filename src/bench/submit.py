"""Memory and time of the submission at test scale: `python -m src.bench.submit --test-cases 2,4,8 --models 2,4`.

Per size, a synthetic dataset in the Kaggle layout (`--train-cases` train cases, N test cases of 1-5
days each, the real sizes and slice counts) and an ensemble of M untrained 2.5D members with hflip
TTA (bench.kernel's fabricate on a written recipe, so the numbers measure the pipeline around the
networks, not their training); then `src.submit` and `src.predict --split test` (the first member)
each run in a fresh process, and the table shows wall time, test case-days and slices, and the peak
RSS growth of each. Both stream the test split one case-day at a time, so the peak stays at one
case-day's images and probabilities per model whatever the number of test case-days: the sizes show it.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path


from src.bench.ensemble import int_list, measure_sizes
from src.bench.kernel import fabricate
from src.core.errors import run_cli
from src.core.memory import reset_peak_rss, status_kib
from src.data.synthetic import generate, parse_sizes, parse_slices
from src.ensembling.submission import SubmitOptions, submit
from src.inference.predict import PredictOptions, predict_run

RECIPE = """name = "bench_submit"
[data]
dir = "{data}"
[folds]
n_folds = 2
{models}
[ensemble]
passes = 0
"""
MODEL = """[[models]]
name = "m{k}"
stage = "seg2d"
arch = "{arch}"
folds = [0, 1]
img_size = {img_size}
"""


def _measured(fn, *args) -> dict:
    """Run fn in this (fresh) process: wall seconds and peak RSS growth in GB."""
    reset_peak_rss()
    base = status_kib("VmRSS")
    start = time.perf_counter()
    fn(*args)
    return {"wall_s": round(time.perf_counter() - start, 1), "peak_rss_gb": round((status_kib("VmHWM") - base) / 2**20, 3)}


def _submit(ensemble: str, data: str, out: str) -> dict:
    return _measured(lambda: submit(SubmitOptions(ensemble=Path(ensemble), data_dir=Path(data), out=Path(out),
                                                  device="cpu")))


def _predict(run: str, data: str, out: str) -> dict:
    return _measured(lambda: predict_run(PredictOptions(run=Path(run), split="test", tta=("hflip",),
                                                        data_dir=Path(data), out=Path(out), device="cpu")))


def _fresh(fn, *args) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def generated_split(root: Path, test_cases: int, models: int, train_cases: int, arch: str, img_size: int, seed: int,
                    sizes: list[tuple[int, int]] | None = None, slices: list[int] | None = None):
    """A generated dataset under root/data and an ensemble of `models` untrained members:
    (generate's summary, ensemble.json)."""
    data = root / "data"
    summary = generate(data, cases=train_cases, seed=seed, test_cases=test_cases, workers=1,
                       sizes=sizes, slices=slices)
    recipe = root / "recipe.toml"
    recipe.write_text(RECIPE.format(data=data, models="".join(
        MODEL.format(k=k, arch=arch, img_size=img_size) for k in range(models))))
    return summary, fabricate(recipe, root, log=lambda line: None)


def bench(test_cases: int, models: int, train_cases: int, arch: str, img_size: int, seed: int, work: Path,
          sizes: list[tuple[int, int]] | None = None, slices: list[int] | None = None) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"submit_{test_cases}x{models}_", dir=work))
    try:
        data = root / "data"
        summary, ensemble = generated_split(root, test_cases, models, train_cases, arch, img_size, seed, sizes, slices)
        sub = _fresh(_submit, str(ensemble), str(data), str(root / "submission.csv"))
        pred = _fresh(_predict, str(root / "runs" / "m0"), str(data), str(root / "pred"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"test_cases": test_cases, "test_case_days": summary.test_case_days, "test_slices": summary.test_slices,
            "models": models,
            "submit_wall_s": sub["wall_s"], "submit_peak_rss_gb": sub["peak_rss_gb"],
            "predict_wall_s": pred["wall_s"], "predict_peak_rss_gb": pred["peak_rss_gb"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.bench.submit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test-cases", default="2,4,8", help="comma-separated test case counts")
    parser.add_argument("--models", default="2", help="comma-separated ensemble sizes")
    parser.add_argument("--train-cases", type=int, default=2)
    parser.add_argument("--arch", default="unet_tiny", help="every member's arch (untrained)")
    parser.add_argument("--img-size", type=int, default=64, help="the members' input size")
    parser.add_argument("--sizes", type=parse_sizes, default=None,
                        help="WxH,WxH of the generated scans (default: the real sizes)")
    parser.add_argument("--slices", type=parse_slices, default=None,
                        help="slice counts, the first the majority (default: 144,80)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()), help="scratch folder")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (CSV)")
    args = parser.parse_args(argv)
    sizes = [(models, n) for models in int_list(args.models, "--models") for n in int_list(args.test_cases, "--test-cases")]
    measure_sizes(sizes, lambda models, n: bench(n, models, args.train_cases, args.arch, args.img_size, args.seed,
                                                 args.work, args.sizes, args.slices), args.out)
    return 0


if __name__ == "__main__":
    run_cli(main)

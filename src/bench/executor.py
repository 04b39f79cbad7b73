"""Benchmark of the step executors: `python -m src.bench.executor [--epochs 3] [--repeats 3]`.

Two CPU trainings (2.5D unet_tiny on folds 0 and 1 of a small synthetic set), one thread each: their
wall time run one after another by the serial executor (in this process, torch at one thread) and at
once as two Ray tasks on a local Ray instance of two CPUs (each a subprocess at one thread), medians
over --repeats, and the ratio. Then the per-step overhead of Ray: the wall time of a trivial step as a
Ray task minus the same command as a plain subprocess.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from src.core.errors import run_cli
from src.data.folds import make_folds
from src.data.preparation import prepare
from src.data.synthetic import generate
from src.orchestration.execution import LocalExecutor, run_graph
from src.orchestration.steps import OutputLedger, Step


def trainings(root: Path, runs: Path, epochs: int, img_size: int) -> list[Step]:
    steps = []
    for fold in (0, 1):
        argv = ("--stage", "seg2d", "--arch", "unet_tiny", "--fold", str(fold), "--data-dir", str(root / "data"),
                "--cache-dir", str(root / "cache"), "--folds-csv", str(root / "folds.csv"), "--out", str(runs),
                "--name", "bench", "--epochs", str(epochs), "--img-size", str(img_size), "--batch-size", "4",
                "--workers", "0", "--device", "cpu", "--augment", "none")
        steps.append(Step(f"train fold {fold}", "src.train", argv, (str(runs / "bench" / f"fold{fold}"),),
                          log=str(runs / f"fold{fold}.log")))
    return steps


def timed(steps: list[Step], executor) -> float:
    start = time.perf_counter()
    run_graph(steps, OutputLedger(), executor, say=lambda _: None)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.bench.executor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import ray

    from src.orchestration.ray_executor import RayExecutor

    with tempfile.TemporaryDirectory(prefix="bench_executor_") as tmp:
        root = Path(tmp)
        generate(root / "data", cases=args.cases, seed=0, sizes=[(args.img_size, args.img_size)], slices=[16], workers=1)
        make_folds(root / "data", n_folds=2, seed=0).to_csv(root / "folds.csv", index=False)
        prepare(root / "data", root / "cache", workers=1)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            serial = [timed(trainings(root, root / f"serial{r}", args.epochs, args.img_size), LocalExecutor())
                      for r in range(args.repeats)]
        finally:
            torch.set_num_threads(threads)
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
        startup = time.perf_counter() - start
        try:
            executor = RayExecutor()
            parallel = [timed(trainings(root, root / f"ray{r}", args.epochs, args.img_size), executor)
                        for r in range(args.repeats)]
            trivial = Step("trivial", "src.bench.executor", ("--help",), (str(root / "never written"),))
            in_ray = [timed([trivial], executor) for _ in range(5)]
        finally:
            ray.shutdown()
        direct = []
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run(trivial.command(list(trivial.argv)), capture_output=True, check=True)
            direct.append(time.perf_counter() - start)
    rows = [("serial executor, one after another", serial), ("ray executor, two at once", parallel)]
    print(f"two CPU trainings (unet_tiny, {args.img_size} px, {args.epochs} epochs), one thread each; "
          f"median of {args.repeats}")
    print("| executor | median s | runs (s) |\n|---|---|---|")
    for name, values in rows:
        print(f"| {name} | {statistics.median(values):.1f} | {' '.join(f'{v:.1f}' for v in values)} |")
    print(f"ratio ray / serial: {statistics.median(parallel) / statistics.median(serial):.2f}")
    print(f"per-step overhead of a Ray task (median of 5, trivial step): "
          f"{statistics.median(in_ray) - statistics.median(direct):.2f} s "
          f"({statistics.median(in_ray):.2f} s as a task, {statistics.median(direct):.2f} s as a subprocess); "
          f"Ray start-up {startup:.1f} s")
    return 0


if __name__ == "__main__":
    run_cli(main)

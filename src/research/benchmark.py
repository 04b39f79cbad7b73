"""Benchmark of segmentation archs: size, MACs, speed, data loading, peak memory and (optionally) score.

Each arch is measured in a fresh Python process (so one arch's memory never counts for the next and
a crash or an out-of-memory ends only its own row):

- params (millions) and GMACs per image (multiply-accumulates of Conv2d, ConvTranspose2d and Linear
  layers, counted by forward hooks on one image);
- data_ms: milliseconds to fetch a training batch from the 2.5D sampler (the `light` augmentation,
  `--workers` loader processes), median over `repeats` batches after the first;
- train_ms: one AdamW step (forward, BCE loss, backward, step) on those batches, median over repeats
  after a warm-up step; infer_ms: no-grad forward time per image at the same batch size;
- peak_mb: CUDA max_memory_allocated on a GPU; on CPU the growth of the process's peak resident set
  (VmHWM, reset after start-up) over the resident set before the model was built.

Out of memory: on CUDA a torch.OutOfMemoryError (with `memory_limit_mb`, the process's share of the GPU
is capped there); on CPU, with `memory_limit_mb`, a watchdog thread ends the process as soon as the
resident set grows past the limit (and a peak found past it at the end counts too). Either way the
arch's row says OOM and the benchmark goes on with the next.

With `train_epochs`, each arch that fitted is also trained on `fold` through `python -m src.train`
and its best epoch's validation score and Dice are reported, with the training time. A trained run
that is complete (done.json) is reused on a re-run.

On a dataset of 2D images (the prepared cache's description says dims "2d"; Carvana, EBHI-Seg, nnU-Net
2D) the model is the seg2d stage's for that cache (src.engine.image2d.ImageSegmentationTask.build_model:
the description's input channels and classes; --channels is then an error), data_ms times batches of
the task's ImageDataset over every cached image (same `light` augmentation), the loss is BCE on the
one-vs-rest targets, and the training's val_score / val_dice are the dataset's metric, the mean
per-image Dice (--folds-csv must then be a 2D folds file: python -m src.make_folds on the data).
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from src.core.artifacts import fold_dir
from src.core.device import select_device
from src.core.errors import DataError
from src.core.memory import reset_peak_rss
from src.data.image_cache import is_image_cache
from src.data.preparation import ensure_prepared

OOM_EXIT = 75  # exit status of a worker whose watchdog saw the memory limit passed
RESULT_TAG = "BENCHMARK_RESULT "


@dataclass(frozen=True)
class BenchmarkOptions:
    archs: tuple[str, ...] = field(metadata={"help": "registered arch names", "nargs": "+"})
    img_size: int = 256
    batch_size: int = 8
    channels: int = field(default=3, metadata={"help": "2.5D input channels"})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda"})
    repeats: int = field(default=5, metadata={"help": "timed batches / steps per measurement (median)"})
    train_epochs: int = field(default=0, metadata={"help": "also train each arch this long on --fold and score it"})
    fold: str = "0"
    data_dir: str = "data/synthetic"
    cache_dir: str = field(default="", metadata={"help": "default: cache/<data folder name>"})
    folds_csv: str = "folds/folds.csv"
    memory_limit_mb: float = field(default=0.0, metadata={
        "flag": "--memory-limit", "metavar": "MB",
        "help": "mark an arch OOM when its peak memory passes this (CPU: RSS growth); 0 = none"})
    workers: int = field(default=0, metadata={"help": "data loader processes"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads; 0 = torch's default"})
    out: str = "reports/benchmark"

    def __post_init__(self):
        from src.models.registry import get_arch

        if not self.archs:
            raise DataError("--archs: name at least one arch")
        for arch in self.archs:
            try:
                get_arch(arch)
            except KeyError as exc:
                raise DataError(f"--archs: {exc.args[0]}") from None
        for flag, value, low in (("--img-size", self.img_size, 8), ("--batch-size", self.batch_size, 1),
                                 ("--channels", self.channels, 1), ("--repeats", self.repeats, 1),
                                 ("--train-epochs", self.train_epochs, 0), ("--workers", self.workers, 0),
                                 ("--threads", self.threads, 0)):
            if value < low:
                raise DataError(f"{flag}: must be at least {low}, got {value}")
        if self.device not in ("cpu", "cuda"):
            raise DataError(f"--device: expected cpu or cuda, got {self.device!r}")
        select_device(self.device)
        if self.memory_limit_mb < 0:
            raise DataError(f"--memory-limit: must be >= 0 MB, got {self.memory_limit_mb}")
        if self.train_epochs and not Path(self.folds_csv).is_file():
            raise DataError(f"--folds-csv: {self.folds_csv} not found (needed by --train-epochs; run python -m src.make_folds)")

    @property
    def cache(self) -> Path:
        from src.data.volumes import cache_dir_for

        return cache_dir_for(self.cache_dir, self.data_dir)


# ---- the worker: one arch in a fresh process -------------------------------------------------------
def count_macs(model, example) -> int:
    """Multiply-accumulates of one forward pass of `example` (one image) over Conv2d, ConvTranspose2d, Linear."""
    import torch
    import torch.nn as nn

    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output.numel() * k
        elif isinstance(module, nn.ConvTranspose2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            total += inputs[0].numel() * k
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return total


def _memory_watchdog(limit_bytes: int, base: int) -> None:
    from src.research.evaluation import rss_bytes

    def watch():
        while True:
            grown = rss_bytes() - base
            if grown > limit_bytes:
                print(RESULT_TAG + json.dumps({"status": "OOM", "peak_mb": grown / 2**20}), flush=True)
                os._exit(OOM_EXIT)
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()


def _warm_up_torch() -> None:
    """One training step of a throwaway net using every layer kind, on CPU."""
    import torch
    import torch.nn as nn

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.InstanceNorm2d(4, affine=True), nn.ReLU(),
                        nn.MaxPool2d(2), nn.ConvTranspose2d(4, 4, 2, stride=2), nn.Conv2d(4, 4, 3, padding=2, dilation=2),
                        nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Upsample(scale_factor=2, mode="bilinear"))
    optimizer = torch.optim.AdamW(net.parameters())
    for _ in range(2):
        nn.functional.binary_cross_entropy_with_logits(net(torch.randn(2, 3, 32, 32)), torch.rand(2, 4, 64, 64)).backward()
        optimizer.step()
    with torch.no_grad():
        net.eval()(torch.randn(2, 3, 32, 32))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _volume_data(spec: dict):
    """GI volumes: the 2.5D sampler's training slices (`light` augmentation) and a `channels`-input, 3-class model."""
    from src.data.augment import build_augment
    from src.data.geometry import Geometry
    from src.data.samples import SliceDataset, StackSpec
    from src.data.volumes import VolumeCache
    from src.models.registry import create_model

    case_days = VolumeCache(spec["cache"]).case_days()
    if not case_days:
        raise DataError(f"{spec['cache']}: empty cache (run python -m src.prepare --data-dir {spec['data_dir']})")
    dataset = SliceDataset(spec["cache"], case_days, StackSpec(spec["channels"]), Geometry(spec["img_size"]),
                           build_augment("light"))
    return dataset, lambda: create_model(spec["arch"], in_channels=spec["channels"], classes=3)


def image_task(spec: dict):
    """2D images: the seg2d stage's task for the cache (src.engine.image2d), so the model's input channels
    and classes come from the dataset description by the rule training uses."""
    from src.engine.config import Seg2DConfig
    from src.engine.seg2d import seg2d_task

    cfg = Seg2DConfig(arch=spec["arch"], img_size=spec["img_size"], batch_size=spec["batch_size"], augment="light",
                      device=spec["device"], workers=spec["workers"], data_dir=spec["data_dir"], cache_dir=spec["cache"])
    return seg2d_task(cfg, spec["cache"])


def _image_data(spec: dict):
    """2D images: every cached training image through the task's ImageDataset, and the task's model."""
    task = image_task(spec)
    keys = list(task.cache.table()["key"])
    if not keys:
        raise DataError(f"{spec['cache']}: no cached images (run python -m src.prepare --data-dir {spec['data_dir']})")
    return task.train_dataset(keys), task.build_model


def measure(spec: dict) -> dict:
    """Measure one arch (spec: the fields of BenchmarkOptions with `arch` and `cache`) in this process."""
    import torch
    from torch.utils.data import DataLoader

    from src.models.registry import count_parameters, get_arch
    from src.research.evaluation import peak_rss_bytes, rss_bytes

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    limit = int(spec["memory_limit_mb"] * 2**20)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        if limit:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), device)
    dataset, build_model = _image_data(spec) if is_image_cache(spec["cache"]) else _volume_data(spec)
    loader = iter(DataLoader(dataset, batch_size=spec["batch_size"], shuffle=True, num_workers=spec["workers"],
                             drop_last=len(dataset) >= spec["batch_size"]))
    batches, data_times = [next(loader)], []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        try:
            batch = next(loader)
        except StopIteration:  # a small dataset: start another pass
            loader = iter(DataLoader(dataset, batch_size=spec["batch_size"], shuffle=True, num_workers=0))
            batch = next(loader)
        data_times.append(time.perf_counter() - start)
        batches.append(batch)
    get_arch(spec["arch"])  # imports every model family (~150 MB of libraries) before the baseline
    _warm_up_torch()  # lazily loaded kernels and libraries are torch's memory, not the arch's
    base = rss_bytes()
    try:
        reset_peak_rss()
    except OSError:
        pass
    if limit and not cuda:
        _memory_watchdog(limit, base)
    row: dict = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "data_ms": 1e3 * statistics.median(data_times)}
    try:
        model = build_model().to(device)
        row["params_m"] = count_parameters(model) / 1e6
        images = [b["image"].to(device) for b in batches]
        masks = [b["mask"].to(device) for b in batches]
        row["gmacs"] = count_macs(model.eval(), images[0][:1]) / 1e9
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        step_times = []
        for i, (image, mask) in enumerate(zip(images, masks)):
            _sync(device)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            out = model(image)
            loss = loss_fn(out[0] if isinstance(out, (tuple, list)) else out, mask)
            loss.backward()
            optimizer.step()
            _sync(device)
            if i:  # the first step is the warm-up
                step_times.append(time.perf_counter() - start)
        model.eval()
        infer_times = []
        with torch.no_grad():
            for i, image in enumerate(images):
                _sync(device)
                start = time.perf_counter()
                model(image)
                _sync(device)
                if i:
                    infer_times.append((time.perf_counter() - start) / image.shape[0])
        row.update(status="ok", train_ms=1e3 * statistics.median(step_times), infer_ms=1e3 * statistics.median(infer_times))
        peak = torch.cuda.max_memory_allocated(device) if cuda else peak_rss_bytes() - base
        row["peak_mb"] = peak / 2**20
        if limit and not cuda and peak > limit:
            row["status"] = "OOM"
    except torch.OutOfMemoryError:
        row.update(status="OOM", peak_mb=(torch.cuda.max_memory_allocated(device) if cuda else peak_rss_bytes() - base) / 2**20)
    except RuntimeError as exc:
        if "out of memory" not in str(exc).lower():
            raise
        row.update(status="OOM", peak_mb=(peak_rss_bytes() - base) / 2**20)
    return row


def worker_main() -> None:
    """Entry of a worker process: argv[1] is the JSON spec; the result is printed as one tagged line."""
    spec = json.loads(sys.argv[1])
    try:
        row = measure(spec)
    except DataError as exc:
        row = {"status": f"error: {exc}"}
    print(RESULT_TAG + json.dumps(row), flush=True)


def _run_worker(spec: dict) -> dict:
    code = "from src.research.benchmark import worker_main; worker_main()"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True)
    tagged = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if tagged:
        return json.loads(tagged[-1][len(RESULT_TAG):])
    if proc.returncode in (-9, 137):  # the kernel's OOM killer
        return {"status": "OOM"}
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or [f"exit code {proc.returncode}"]
    if "out of memory" in lines[-1].lower():
        return {"status": "OOM"}
    return {"status": f"error: {lines[-1][:200]}"}


# ---- the driver ----------------------------------------------------------------------------------------
COLUMNS = ["arch", "status", "device", "params_m", "gmacs", "train_ms", "infer_ms", "data_ms", "peak_mb"]
TRAIN_COLUMNS = ["train_s", "val_score", "val_dice"]


def _train_and_score(opts: BenchmarkOptions, arch: str, runs: Path, log) -> dict:
    from src.research.evaluation import train

    image = is_image_cache(opts.cache)
    channels = "" if image else f"_c{opts.channels}"
    name = f"bench_{arch}_{opts.img_size}px_b{opts.batch_size}{channels}_e{opts.train_epochs}"
    fold = fold_dir(runs, name, opts.fold)
    seconds = math.nan
    if not fold.is_done():
        args = ["--stage", "seg2d", "--arch", arch, "--fold", opts.fold, "--data-dir", opts.data_dir,
                "--cache-dir", str(opts.cache), "--folds-csv", opts.folds_csv, "--out", str(runs), "--name", name,
                "--img-size", str(opts.img_size), "--batch-size", str(opts.batch_size),
                *([] if image else ["--channels", str(opts.channels)]), "--epochs", str(opts.train_epochs),
                "--device", opts.device, "--workers", str(opts.workers)]
        if fold.has_resume_state():
            args.append("--resume")
        try:
            seconds = train(args, runs / f"{name}.log")
        except DataError as exc:
            if "out of memory" in str(exc).lower():
                return {"status": "OOM (training)"}
            raise
    else:
        log(f"  {arch}: trained run {fold.path} is complete, reused")
    history = fold.read_log()
    if history is None or history.empty or "val_score" not in history:
        return {"train_s": seconds}
    best = history.loc[history["val_score"].idxmax()]
    return {"train_s": seconds, "val_score": float(best["val_score"]), "val_dice": float(best["val_dice"])}


def run_benchmark(opts: BenchmarkOptions, log=print) -> pd.DataFrame:
    """Measure every arch of `opts`; writes <out>/benchmark.csv and benchmark.md and returns the table."""
    from src.research.evaluation import write_tables

    ensure_prepared(opts.data_dir, opts.cache, log)
    if is_image_cache(opts.cache) and opts.channels != BenchmarkOptions.channels:
        raise DataError(f"--channels is an option of slice volumes; {opts.cache} holds 2D images "
                        "(the model's input channels come from its description)")
    out = Path(opts.out)
    rows = []
    for i, arch in enumerate(opts.archs, 1):
        spec = {**asdict(opts), "arch": arch, "cache": str(opts.cache)}
        start = time.perf_counter()
        row = {"arch": arch, **_run_worker(spec)}
        log(f"[{i}/{len(opts.archs)}] {arch}: {row['status']} ({time.perf_counter() - start:.1f} s)")
        if opts.train_epochs and row["status"] == "ok":
            row.update(_train_and_score(opts, arch, out / "runs", log))
        rows.append(row)
    columns = COLUMNS + (TRAIN_COLUMNS if opts.train_epochs else [])
    table = pd.DataFrame(rows).reindex(columns=columns)
    write_tables(table, out / "benchmark.csv", out / "benchmark.md", digits=3)
    return table

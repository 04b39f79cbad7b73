"""Benchmark of the 2.5D data pipeline: `python -m src.bench.loader [--data-dir DIR]`.

Prints two tables measured in one process:
1. samples per second of our cached-volume sampler against a loader that reads the PNGs of every
   sample and decodes its RLE rows (the public baseline's way), same stack, size and no augmentation;
2. the share of a training step spent waiting for data, for small archs, with the real DataLoader.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from src.core.errors import run_cli
from src.data import rle
from src.data.augment import build_augment
from src.data.geometry import Geometry
from src.data.layout import CLASSES, read_labels, read_slice, scan_split
from src.data.samples import SliceDataset, StackSpec
from src.data.volumes import VolumeCache, cache_dir_for
from src.engine.losses import CombinedLoss
from src.models.registry import create_model


class PngSliceDataset(Dataset):
    """The baseline: every sample reads its neighbouring PNGs and decodes its RLE rows."""

    def __init__(self, data_dir: Path, case_days: list[str], spec: StackSpec, geometry: Geometry):
        index = scan_split(data_dir, "train")
        self.index = index[index["case_day"].isin(case_days)].reset_index(drop=True)
        self.labels = read_labels(Path(data_dir) / "train.csv").set_index(["id", "class"])["rle"]
        self.spec, self.geometry = spec, geometry
        self.groups = {cd: g.reset_index(drop=True) for cd, g in self.index.groupby("case_day")}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        row = self.index.iloc[i]
        group = self.groups[row["case_day"]]
        z = int(np.flatnonzero(group["id"] == row["id"])[0])
        planes = [read_slice(group["path"][k], row["height"], row["width"]).astype(np.float32)
                  for k in self.spec.indices(z, len(group))]
        stack = np.stack(planes)
        stack /= max(stack.max(), 1.0)
        mask = np.stack([rle.decode(self.labels.get((row["id"], c), ""), (row["height"], row["width"]))
                         for c in CLASSES])
        return (torch.from_numpy(self.geometry.to_model(stack)),
                torch.from_numpy(self.geometry.to_model(mask, nearest=True)))


def samples_per_second(dataset: Dataset, n: int, repeats: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    rates = []
    for _ in range(repeats):
        picks = rng.integers(0, len(dataset), size=n)
        start = time.perf_counter()
        for i in picks:
            dataset[int(i)]
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def data_wait_share(dataset: Dataset, arch: str, channels: int, batch_size: int, steps: int, workers: int) -> tuple[float, float]:
    """(share of step time spent waiting for the loader, seconds per step) over `steps` train steps."""
    model = create_model(arch, in_channels=channels).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = CombinedLoss("bce:0.5,dice:0.5")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    loader = DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers, drop_last=True,
                        persistent_workers=False)
    wait = busy = 0.0
    it = iter(loader)
    next(it)  # warm-up: worker start and first batch are not steady state
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        loss = criterion(model(batch["image"]), batch["mask"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        wait, busy = wait + t1 - t0, busy + time.perf_counter() - t1
    return wait / (wait + busy), (wait + busy) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.bench.loader", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/synthetic")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--archs", default="unet_r18,unet_effb0")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    from src.data.preparation import prepare

    cache_dir = cache_dir_for(args.cache_dir, args.data_dir)
    prepare(args.data_dir, cache_dir)
    case_days = VolumeCache(cache_dir).case_days()
    spec, geometry = StackSpec(args.channels, args.stride), Geometry(args.img_size)
    ours = SliceDataset(cache_dir, case_days, spec, geometry)
    baseline = PngSliceDataset(Path(args.data_dir), case_days, spec, geometry)
    torch.set_num_threads(1)  # the loaders run single-threaded, as each DataLoader worker does
    base_rate = samples_per_second(baseline, args.samples, args.repeats)
    our_rate = samples_per_second(ours, args.samples, args.repeats)
    torch.set_num_threads(torch.get_num_interop_threads())
    print(f"2.5D sampling, {args.channels} channels stride {args.stride}, {args.img_size} px, "
          f"median of {args.repeats} x {args.samples} random samples, one process")
    print(pd.DataFrame([{"loader": "PNG per sample (baseline)", "samples/s": round(base_rate, 1), "ratio": 1.0},
                        {"loader": "cached volumes (ours)", "samples/s": round(our_rate, 1),
                         "ratio": round(our_rate / base_rate, 1)}]).to_string(index=False))
    rows = []
    for arch in filter(None, args.archs.split(",")):
        dataset = SliceDataset(cache_dir, case_days, spec, geometry, build_augment("light"))
        share, step = data_wait_share(dataset, arch, args.channels, args.batch_size, args.steps, args.workers)
        rows.append({"arch": arch, "batch": args.batch_size, "s/step": round(step, 3),
                     "data wait share": f"{100 * share:.1f}%"})
    print(f"\ntraining steps with light augmentation, {args.workers} loader workers, {args.steps} steps after warm-up")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    run_cli(main)

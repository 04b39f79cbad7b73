"""The 2D tuner's out-of-fold images, one at a time: `image_sources` lists every cached image with an OOF
prediction in all runs (and in the gate run, whose (K,) presence gates the classes), `proxy_strides` sizes
the proxies to the memory budget, `stream` reads each image once (its models' float16 (K, H, W) files
memory-mapped, its truth from the cache) and scores parameter sets on it exactly with index_map, and
`read_proxies` does so while keeping each image's proxy.

So the tuner never holds the exact arrays of more than one image: Carvana's 5088 train images at
1918 x 1280 are 25 GB of float16 OOF per model, read twice (for the proxies with the scores known before
the search, then for the exact scores of what it found).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from src.core.artifacts import load_prediction
from src.core.errors import DataError
from src.data.image_cache import ImageCache
from src.ensembling.oof import check_probs, shared_folds
from src.ensembling.params2d import ImageEnsembleParams
from src.ensembling.postprocess2d import index_maps
from src.ensembling.search2d import ImageCase, ImageResult, image_scores, make_proxy
from src.ensembling.shards import BASE_GB
from src.inference.runs import TrainedRun

# The proxies' grid has at most this many pixels a side (unless memory asks for fewer): an evaluation's
# cost grows with the grid's pixels, and at 256 a Carvana car (about 1000 px wide at 1918 x 1280) is
# still some 130 grid cells wide, its boundary sampled every 7.5 px.
PROXY_SIDE = 256
MIN_SIDE = 16  # below this a proxy no longer ranks candidates: too little memory is an error
FULL_BYTES_PER_PIXEL = 16  # per class, one image read in full: the float32 blend and its temporaries
IMAGE_OVERHEAD = 4096  # bytes per proxy beside its arrays (Python objects)

Params = ImageEnsembleParams | dict[int, ImageEnsembleParams]  # one for every image, or one per fold


@dataclass(frozen=True)
class ImageSource:
    """One OOF image's files: each model's probabilities; its truth is the cache entry `key`; `group` the
    bootstrap's unit (its car; the key itself where the data has no groups)."""

    key: str
    group: str
    fold: int
    shape: tuple[int, int]  # (H, W), from the cache's table
    files: dict[str, Path]  # model name -> OOF .npy
    gate: Path | None = None  # the gate run's OOF (K,) presence

    def read(self, cache: ImageCache) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]:
        """Each model's (K, H, W) float16 probabilities (memory-mapped, checked), the (H, W) truth and the
        gate's (K,) float32 presence (None without a gate)."""
        truth = np.asarray(cache.load(self.key)[1])
        k = cache.description.n_classes
        probs = {name: check_probs(load_prediction(path, mmap=True, image=True), (k, *truth.shape), path)
                 for name, path in self.files.items()}
        presence = None
        if self.gate is not None:
            presence = check_probs(load_prediction(self.gate, image=True), (k,), self.gate).astype(np.float32)
        return probs, truth, presence


def image_sources(runs: list[TrainedRun], cache: ImageCache, log: Callable[[str], None] = print,
                  gate: TrainedRun | None = None) -> list[ImageSource]:
    """Every cached image with an OOF prediction in all runs (and the `gate` run, on the same folds), in
    the cache's order (by id)."""
    folds = shared_folds(runs, also=[gate] if gate else [])
    files = {r.name: r.prediction_files("oof") for r in runs}
    gate_files = gate.prediction_files("oof") if gate else {}
    table = cache.table()
    common = set(folds).intersection(*map(set, files.values()), *([set(gate_files)] if gate else []))
    rows = table[table["key"].isin(common)]
    if rows.empty:
        raise DataError(f"no image has out-of-fold predictions in every run and in the cache {cache.root}")
    skipped = len(set().union(*map(set, files.values()))) - len(rows)
    log(f"ensemble: {len(rows)} OOF images{f' ({skipped} without every prediction left out)' if skipped else ''}")
    return [ImageSource(key, group if isinstance(group, str) and group else key, folds[key], (int(h), int(w)),
                        {name: Path(f[key]) for name, f in files.items()}, Path(gate_files[key]) if gate else None)
            for key, group, h, w in zip(rows["key"], rows["group"], rows["height"], rows["width"])]


def proxy_strides(shapes: list[tuple[int, int]], models: int, classes: int, memory_gb: float,
                  workers: int = 1) -> tuple[int, list[int]]:
    """(side, per-image strides): the finest grid of at most `side` pixels a side per image (stride =
    ceil(longest side / side)) whose proxies fit `memory_gb` beside an interpreter and one full image per
    worker, `side` shrinking from PROXY_SIDE by a fifth at a time."""
    largest = max(h * w for h, w in shapes)
    reserve = workers * (BASE_GB * 2**30 + largest * classes * (2 * models + FULL_BYTES_PER_PIXEL))
    budget = memory_gb * 2**30 - reserve
    per_pixel = models * classes + 1  # uint8 probabilities, the uint8 truth
    side, need = PROXY_SIDE, 0
    while side >= MIN_SIDE:
        strides = [max(1, -(-max(shape) // side)) for shape in shapes]
        need = sum(-(-h // s) * -(-w // s) for (h, w), s in zip(shapes, strides)) * per_pixel
        if need + len(shapes) * IMAGE_OVERHEAD <= budget:
            return side, strides
        side = side * 4 // 5
    raise DataError(f"--memory-gb {memory_gb}: too little for {len(shapes)} images x {models} models with "
                    f"{workers} worker(s) (their proxies of {MIN_SIDE} px a side need "
                    f"{(need + len(shapes) * IMAGE_OVERHEAD) / 2**30:.2f} GB beside {reserve / 2**30:.2f} GB for "
                    "the interpreters and one full image per worker)")


def stream(sources: list[ImageSource], cache: ImageCache, param_sets: list[Params],
           visit: Callable[[ImageSource, dict[str, np.ndarray], np.ndarray, np.ndarray | None], None] | None = None
           ) -> list[ImageResult]:
    """The exact result of each parameter set (one per fold: on the images of its folds), reading one
    image at a time; `visit(source, probs, truth, presence)` sees each image while it is read."""
    rows = [[] for _ in param_sets]
    n_classes = cache.description.n_classes
    for source in sources:
        probs, truth, presence = source.read(cache)
        chosen = [params.get(source.fold) if isinstance(params, dict) else params for params in param_sets]
        distinct = []  # a set equal to one before it is not computed again on this image
        for params in chosen:
            if params is not None and not any(params == other for other in distinct):
                distinct.append(params)
        scores = [image_scores(pred, truth, n_classes) for pred in index_maps(probs, distinct, presence=presence)]
        for out, params in zip(rows, chosen):
            if params is not None:
                out.append((source.key, source.group, *scores[next(i for i, d in enumerate(distinct) if d == params)]))
        if visit is not None:
            visit(source, probs, truth, presence)
    return [ImageResult.of(r) for r in rows]


def read_proxies(sources: list[ImageSource], cache: ImageCache, strides: list[int],
                 param_sets: list[Params]) -> tuple[list[ImageCase], list[ImageResult]]:
    """Every image's proxy (at its stride), and the exact results of `param_sets` made in the same read."""
    cases = []
    stride_of = {s.key: stride for s, stride in zip(sources, strides)}
    results = stream(sources, cache, param_sets, lambda s, probs, truth, presence: cases.append(
        make_proxy(s.key, s.group, s.fold, probs, truth, stride_of[s.key], presence)))
    return cases, results

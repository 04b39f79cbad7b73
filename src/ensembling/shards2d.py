"""The 2D tuner's evaluator over worker processes: the OOF images dealt to shards (src.ensembling.shards's
pool: one shard in this process with --workers 1, else one per spawned worker), each holding its images'
proxies (src.ensembling.oof2d.read_proxies, the exact results of the baseline parameter sets made in
the same read) and scoring parameter sets on them, on proxies for the search and exactly, its images read
again in full, for the report. Results are joined in the images' order, so they do not depend on the
number of workers.
"""
from __future__ import annotations

from pathlib import Path

from src.data.image_cache import ImageCache
from src.ensembling.oof2d import ImageSource, Params, read_proxies, stream
from src.ensembling.search2d import ImageEvaluator, ImageResult
from src.ensembling.shards import ShardBase, ShardPool, deal


class ImageShard(ShardBase):
    """Some OOF images as proxies, with the exact results of `baseline` parameter sets made while reading."""

    def __init__(self, sources: list[ImageSource], strides: list[int], cache_dir: str, baseline: list[Params]):
        self.sources, self.cache = sources, ImageCache(cache_dir)
        cases, self._baseline = read_proxies(sources, self.cache, strides, baseline)
        self.evaluator = ImageEvaluator(cases, self.cache.description.n_classes)
        self._by_key = {c.key: c for c in cases}

    def baseline_scores(self) -> list[ImageResult]:
        return self._baseline

    def score(self, params: Params, keys: list[str] | None) -> ImageResult:
        cases = None if keys is None else [self._by_key[k] for k in keys if k in self._by_key]
        return self.evaluator.score(params, cases)

    def exact(self, param_sets: list[Params]) -> list[ImageResult]:
        return stream(self.sources, self.cache, param_sets)

    def nbytes(self) -> int:
        return self.evaluator.nbytes()


class ImageShardedEvaluator(ShardPool):
    """Proxy results for the search and exact ones for the report, over shards of the OOF images; `cases`
    are the images' sources (key, group, fold: what the search reads), `baseline_results` the exact
    results of `baseline` made while the images were read."""

    def __init__(self, sources: list[ImageSource], strides: list[int], cache_dir: str | Path, workers: int = 1,
                 baseline: list[Params] = ()):
        self.cases = sources
        self.evaluations = 0
        self._order = {s.key: i for i, s in enumerate(sources)}
        parts = deal([h * w for h, w in (s.shape for s in sources)], workers)
        super().__init__(ImageShard, [([sources[i] for i in part], [strides[i] for i in part], str(cache_dir),
                                       list(baseline)) for part in parts])
        try:
            self.baseline_results = [self._join(p) for p in zip(*self._ask("baseline_scores"))]
        except BaseException:
            self.close()
            raise

    def _join(self, parts) -> ImageResult:
        return ImageResult.joined(list(parts), self._order)

    def score(self, params: Params, cases: list[ImageSource] | None = None) -> ImageResult:
        """The proxy result over `cases` (default all); `params` may be one per fold."""
        self.evaluations += 1
        return self._join(self._ask("score", params, None if cases is None else [c.key for c in cases]))

    def exact(self, param_sets: list[Params]) -> list[ImageResult]:
        """The exact result of each parameter set, every image read again in full."""
        return [self._join(p) for p in zip(*self._ask("exact", list(param_sets)))]

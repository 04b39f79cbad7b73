"""The tuner's evaluator at competition scale: OOF case-days split into shards, one per worker process.

Each shard reads its case-days one at a time (src.ensembling.oof) and keeps only their proxies
(make_case with a stride: uint8 on an in-plane grid of the region of interest), so the memory held
is the proxies' and one case-day's full arrays per worker at a time, never every model's volumes.
While a case-day's full arrays are read, the shard scores the parameter sets known before the
search (each model alone, the plain mean) exactly; after the search, `exact` reads every case-day
once more and scores the found parameters exactly, so every score the tuner reports is the
competition metric on the full volumes (equal to src.score on the written masks).

`ShardedEvaluator` has the Evaluator's interface (cases, score, evaluations) for the search; with
one worker the shard lives in this process, with more each lives in a spawned process that
answers requests over a pipe, and the shards score their case-days in parallel.
"""
from __future__ import annotations

import math
import traceback
from dataclasses import dataclass
from multiprocessing import get_context

from src.core.errors import DataError
from src.core.memory import status_kib
from src.ensembling.oof import CaseSource
from src.ensembling.search import Evaluator, OOFCase, Params
from src.metrics.competition import CaseDayScore, MetricResult, aggregate

CaseScores = list[tuple[str, CaseDayScore]]
# Per proxy voxel (of Z x 3 x H x W), besides one byte per model: the truth (bool), the cached blend
# (uint8) and the truth's distance transform (float16 per slice voxel, 2/3 of a byte), rounded up.
BYTES_PER_PROXY_VOXEL = 3
FULL_BYTES_PER_VOXEL = 12  # one case-day read in full: truth, float32 blends and masks, beside 2 per model
BASE_GB = 0.5  # an interpreter with numpy, scipy and the metric
# The proxies' grid has at most this many rows and columns (unless memory asks for fewer): an
# evaluation's cost grows with the grid's voxels, and at 96 the organs of a 266 px slice (tens of
# pixels across) are still several grid cells wide.
PROXY_SIDE = 96


@dataclass(frozen=True)
class CaseInfo:
    """What the search needs to know of a case-day held by a shard."""

    case_day: str
    fold: int
    shape: tuple[int, ...]
    has_gate: bool
    has_box: bool


def choose_stride(shapes: list[tuple[int, ...]], models: int, memory_gb: float, workers: int,
                  side: int = PROXY_SIDE) -> int:
    """The finest proxy grid (stride 1, 2, ...) of at most `side` rows and columns whose proxies fit in
    `memory_gb` beside the interpreters and one full case-day per worker; counted on the full volumes,
    an upper bound of the regions."""
    largest = max(math.prod(s) for s in shapes)
    finest = max(1, -(-max(max(s[2], s[3]) for s in shapes) // side))
    reserve = workers * (BASE_GB * 2**30 + largest * (2 * models + FULL_BYTES_PER_VOXEL))
    budget = memory_gb * 2**30 - reserve
    per_voxel = models + BYTES_PER_PROXY_VOXEL
    for stride in range(finest, finest + 16):
        need = sum(s[0] * s[1] * -(-s[2] // stride) * -(-s[3] // stride) for s in shapes) * per_voxel
        if need <= budget:
            return stride
    raise DataError(f"--memory-gb {memory_gb}: too little for {len(shapes)} case-days x {models} models "
                    f"with {workers} worker(s) (one full case-day needs {reserve / 2**30:.1f} GB per worker)")


class ShardBase:
    """What every shard answers beside its own requests: its process's peak memory, and the dispatch."""

    @staticmethod
    def peak_rss_kib() -> int:
        return status_kib("VmHWM")

    def handle(self, request: tuple):
        kind, *args = request
        return getattr(self, kind)(*args)


class Shard(ShardBase):
    """Some case-days as proxies, with the exact scores of `baseline` parameter sets made while reading."""

    def __init__(self, sources: list[CaseSource], stride: int, baseline: list[Params]):
        self.sources = sources
        cases, self._baseline = [], [[] for _ in baseline]
        for source in sources:
            exact, proxy = source.load(0, stride)  # one read for both
            self._score_exact(exact, baseline, self._baseline)
            cases.append(proxy)
        self.evaluator = Evaluator(cases)
        self._by_name = {c.case_day: c for c in cases}

    @staticmethod
    def _score_exact(case: OOFCase, param_sets: list[Params], out: list[CaseScores]) -> None:
        exact = Evaluator([case])
        for scores, params in zip(out, param_sets):
            scores += exact.case_scores(params)

    def baseline_scores(self) -> list[CaseScores]:
        return self._baseline

    def score(self, params: Params, names: list[str] | None) -> CaseScores:
        cases = None if names is None else [self._by_name[n] for n in names if n in self._by_name]
        return self.evaluator.case_scores(params, cases)

    def exact(self, param_sets: list[Params]) -> list[CaseScores]:
        out = [[] for _ in param_sets]
        for source in self.sources:
            self._score_exact(source.load(0)[0], param_sets, out)
        return out

    def nbytes(self) -> int:
        return self.evaluator.nbytes()


def _serve(conn, factory, args: tuple) -> None:
    """A worker process: build the shard (factory(*args)), then answer requests until told to stop."""
    try:
        shard = factory(*args)
        conn.send(("ok", None))
        while (request := conn.recv()) is not None:
            conn.send(("ok", shard.handle(request)))
    except DataError as exc:
        conn.send(("data", str(exc)))
    except Exception:  # noqa: BLE001 - handed to the parent, which raises it
        conn.send(("crash", traceback.format_exc()))


class Remote:
    """A shard, factory(*args) (a module-level class: it is pickled), in a spawned worker process."""

    def __init__(self, factory, *args):
        # spawned workers import the main module, so the tuner's imports leave torch out (0.8 GB each)
        context = get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, factory, args), daemon=True)
        self.process.start()
        child.close()

    def send(self, request) -> None:
        self.conn.send(request)

    def receive(self):
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"an ensemble worker died (exit code {self.process.exitcode})") from None
        if status == "data":
            raise DataError(value)
        if status == "crash":
            raise RuntimeError(f"an ensemble worker failed:\n{value}")
        return value

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()


class Local:
    """A shard, factory(*args), in this process: the same requests answered at once."""

    def __init__(self, factory, *args):
        self.shard, self._reply = factory(*args), None

    def send(self, request) -> None:
        self._reply = self.shard.handle(request)

    def receive(self):
        return self._reply

    def close(self) -> None:
        pass


def deal(sizes: list[int], workers: int) -> list[list[int]]:
    """Indices of the items of `sizes` dealt to min(workers, items) parts (at least one): largest first,
    round robin, so that each part holds items of every size (and of every fold, in practice)."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    n = max(1, min(workers, len(sizes)))
    return [order[k::n] for k in range(n)]


class ShardPool:
    """One shard per part (`factory(*args)` for each args of `parts`): in this process with one part,
    else each in a spawned worker process; requests go to every shard, and they answer in parallel."""

    def __init__(self, factory, parts: list[tuple]):
        kind = Local if len(parts) == 1 else Remote
        self._shards = []
        try:
            for args in parts:
                self._shards.append(kind(factory, *args))
            if kind is Remote:
                for shard in self._shards:
                    shard.receive()  # built
        except BaseException:
            self.close()
            raise

    def _ask(self, *request) -> list:
        for shard in self._shards:
            shard.send(request)
        return [shard.receive() for shard in self._shards]

    def nbytes(self) -> int:
        """Bytes of proxies held by every shard."""
        return sum(self._ask("nbytes"))

    def workers_peak_rss_gb(self) -> float:
        """Sum of the worker processes' peak resident memory (0 when the shard lives in this process)."""
        remote = [s for s in self._shards if isinstance(s, Remote)]
        for shard in remote:
            shard.send(("peak_rss_kib",))
        return sum(shard.receive() for shard in remote) / 2**20

    def close(self) -> None:
        for shard in self._shards:
            shard.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ShardedEvaluator(ShardPool):
    """Proxy scores for the search, exact scores for the report, over shards of the case-days.

    `baseline` parameter sets are scored exactly while the case-days are read (`baseline_results`).
    Case-days are dealt to shards largest first, round robin (`deal`), so that each holds every fold.
    """

    def __init__(self, sources: list[CaseSource], stride: int, workers: int = 1, baseline: list[Params] = ()):
        self.cases = [CaseInfo(s.case_day, s.fold, s.shape, s.has_gate, s.has_box) for s in sources]
        self.evaluations = 0
        self._order = {s.case_day: i for i, s in enumerate(sources)}
        parts = deal([math.prod(s.shape) for s in sources], workers)
        super().__init__(Shard, [([sources[i] for i in part], stride, list(baseline)) for part in parts])
        try:
            self.baseline_results = [self._aggregate(parts) for parts in zip(*self._ask("baseline_scores"))]
        except BaseException:
            self.close()
            raise

    def _aggregate(self, parts) -> MetricResult:
        return aggregate(self.ordered(parts))

    def ordered(self, parts) -> CaseScores:
        """Case scores of every shard, in the sources' order (so results do not depend on workers)."""
        return sorted((item for part in parts for item in part), key=lambda item: self._order[item[0]])

    def score(self, params: Params, cases: list[CaseInfo] | None = None) -> MetricResult:
        """The proxy metric over `cases` (default all); `params` may be one per fold."""
        self.evaluations += 1
        names = None if cases is None else [c.case_day for c in cases]
        return self._aggregate(self._ask("score", params, names))

    def exact(self, param_sets: list[Params]) -> list[CaseScores]:
        """Exact case scores of each parameter set, every case-day read again in full."""
        replies = self._ask("exact", list(param_sets))
        return [self.ordered(parts) for parts in zip(*replies)]

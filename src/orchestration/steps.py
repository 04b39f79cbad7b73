"""Steps: a stage command with the files it reads and writes, what it runs on, where its output goes;
the graph of steps (a step waits for the steps whose outputs it reads) and the ledgers that decide
whether a step is up to date and whether it resumes."""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from src.core.atomic import write_json_atomic
from src.core.errors import DataError
from src.core.readers import read_json_object


@dataclass(frozen=True)
class Step:
    """One stage command: `python -m <module> <argv>`, with the files it reads and writes."""

    name: str
    module: str
    argv: tuple[str, ...]
    outputs: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    resumable: bool = False  # gets --resume when its outputs are incomplete but it was started
    once: bool = False  # done whenever its outputs exist (e.g. generated data is never regenerated)
    always: bool = False  # runs every time: the stage itself skips what is up to date (the cache)
    log: str = ""  # the file its output goes to
    cpus: int = 1  # CPU cores (and threads) it takes
    gpus: int = 0  # GPUs it takes where the cluster has GPUs
    procs: int = 1  # processes: more than one runs the stage under torchrun (DDP, one process per GPU)

    def stamp(self) -> str:
        """Hash of the command and of the inputs: file contents for files, sizes and times in folders."""
        digest = hashlib.sha256(json.dumps([self.module, self.argv]).encode())
        for path in map(Path, self.inputs):
            if path.is_file():
                digest.update(hashlib.sha256(path.read_bytes()).digest())
            for f in sorted(path.rglob("*")) if path.is_dir() else []:
                if f.is_file():
                    st = f.stat()
                    digest.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
        return digest.hexdigest()

    def command(self, argv: list[str]) -> list[str]:
        """`python -m module argv`, or under torchrun with `procs` processes on one machine (a free port each)."""
        if self.procs > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(self.procs),
                    "-m", self.module, *argv]
        return [sys.executable, "-m", self.module, *argv]


def _within(path: str, folder: str) -> bool:
    return Path(path) == Path(folder) or Path(folder) in Path(path).parents


def dependencies(steps: list[Step]) -> dict[str, set[str]]:
    """step name -> the earlier steps it waits for: those writing a path it reads (or a folder around
    it, or a file inside it). Two steps writing the same path are a DataError: never two writers at once."""
    deps: dict[str, set[str]] = {}
    for i, step in enumerate(steps):
        if step.name in deps:
            raise DataError(f"two steps are named {step.name!r}")
        for other in steps[:i]:
            shared = [o for o in step.outputs for p in other.outputs if _within(o, p) or _within(p, o)]
            if shared:
                raise DataError(f"steps {other.name!r} and {step.name!r} both write {shared[0]}")
        deps[step.name] = {other.name for other in steps[:i]
                           if any(_within(i_, o) or _within(o, i_) for i_ in step.inputs for o in other.outputs)}
    return deps


class StampLedger:
    """The pipeline's record (a JSON file): a step is up to date when its outputs exist and its stamp
    matches its last completed run; a resumable step started with the same stamp gets --resume."""

    def __init__(self, path: Path):
        self.path = path
        self.state = read_json_object(path, "pipeline state") if path.exists() else {}

    def up_to_date(self, step: Step) -> bool:
        outputs_exist = all(Path(p).exists() for p in step.outputs)
        return not step.always and outputs_exist and (step.once or self.state.get(step.name) == step.stamp())

    def start(self, step: Step) -> tuple[list[str], bool]:
        """The step's arguments for this run (with --resume when due), and whether it resumes; recorded."""
        stamp = step.stamp()
        resumed = step.resumable and self.state.get(step.name + ":started") == stamp
        self.state[step.name + ":started"] = stamp
        write_json_atomic(self.path, self.state)
        return [*step.argv, *(["--resume"] if resumed else [])], resumed

    def finish(self, step: Step) -> None:
        self.state[step.name] = step.stamp()  # inputs may be the step's own outputs (the cache)
        write_json_atomic(self.path, self.state)


class OutputLedger:
    """Up to date when the outputs exist; a resumable step always gets --resume (the stage's own rule
    then continues a saved state or starts afresh: src.engine.fold_writer). No record is kept."""

    def up_to_date(self, step: Step) -> bool:
        return all(Path(p).exists() for p in step.outputs)

    def start(self, step: Step) -> tuple[list[str], bool]:
        return [*step.argv, *(["--resume"] if step.resumable else [])], False

    def finish(self, step: Step) -> None:
        pass

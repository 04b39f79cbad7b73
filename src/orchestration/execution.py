"""Running a graph of steps: which step starts when (its inputs ready), what a failure stops (the steps
that depend on it; independent ones finish), the progress lines, the step logs. The executor decides
where a step runs: `local` (the default) one at a time in this process, `ray` as Ray tasks across the
GPUs and machines of a Ray cluster (src.orchestration.ray_executor, imported only then)."""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import field
from pathlib import Path

from src.core.atomic import ensure_folder
from src.core.errors import DataError, os_error_line
from src.orchestration.steps import Step, dependencies

EXECUTORS = ("local", "ray")


def executor_field():
    return field(default="local", metadata={"help": "local: one step at a time here | ray: steps as Ray tasks"})


def address_field():
    return field(default="", metadata={
        "help": "with --executor ray: auto | HOST:PORT of a running Ray cluster; empty: start one on this machine"})


def check_executor(name: str) -> None:
    if name not in EXECUTORS:
        raise DataError(f"--executor: expected {' or '.join(EXECUTORS)}, got {name!r}")


class StepKilled(Exception):
    """The step's process died of a signal (the OOM killer, a lost node): retried like a lost worker."""


# ---- a step's log ----------------------------------------------------------------------------------
def begin_log(step: Step) -> None:
    """An empty log for a new run of the step (a retry appends to it)."""
    if step.log:
        ensure_folder(Path(step.log).parent)
        Path(step.log).write_text("")


def last_line(step: Step) -> str:
    lines = Path(step.log).read_text(errors="replace").splitlines() if step.log and Path(step.log).is_file() else []
    return next((ln.strip() for ln in reversed(lines) if ln.strip() and not ln.startswith("$ ")), "no output")


class _Tee(io.TextIOBase):
    """Writes to every stream still open (a library that kept this object after its step, as a logging
    handler made at import, writes on to the console); not a terminal, so a training prints one line per epoch."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            if not stream.closed:
                stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            if not stream.closed:
                stream.flush()


def run_in_process(step: Step, argv: list[str]) -> str | None:
    """Run the step's main here, its output to the console and its log; None, or why it failed."""
    with open(step.log or os.devnull, "a") as sink, contextlib.redirect_stdout(_Tee(sys.stdout, sink)), \
            contextlib.redirect_stderr(_Tee(sys.stderr, sink)):
        print(f"$ {' '.join(step.command(argv))}", file=sink, flush=True)
        try:
            code = importlib.import_module(step.module).main(argv)
        except DataError as exc:  # as run_cli would: one line, exit code 2
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
            return "exit code 2"
        except OSError as exc:
            print(f"error: {os_error_line(exc)}", file=sys.stderr)
            return "exit code 2"
        except Exception:
            traceback.print_exc()
            return "exit code 1"
    return f"exit code {code}" if code else None


def _die_with_parent() -> None:
    """In the child: killed when its parent (a Ray worker) dies, so a retry never meets a live orphan."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_subprocess(step: Step, argv: list[str], cwd: str) -> str | None:
    """Run the step as `python -m` in `cwd` with `step.cpus` threads, its output to its log and, each
    line prefixed by the step, to stdout; None, or why it failed. A retry (the log holds an earlier
    attempt) of a resumable step resumes; death by a signal raises StepKilled."""
    log = Path(step.log or os.devnull)
    if step.resumable and log.is_file() and log.stat().st_size and "--resume" not in argv:
        argv = [*argv, "--resume"]
    threads = str(max(1, step.cpus // step.procs))  # torchrun's processes share the step's cores
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    with open(log, "a") as sink:
        print(f"$ {' '.join(step.command(argv))}", file=sink, flush=True)
        proc = subprocess.Popen(step.command(argv), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", preexec_fn=_die_with_parent)
        for line in proc.stdout:
            sink.write(line)
            sink.flush()
            print(f"[{step.name}] {line}", end="", flush=True)
        code = proc.wait()
    if code < 0:
        raise StepKilled(f"{step.name}: killed by signal {-code}")
    return f"exit code {code}" if code else None


# ---- executors ---------------------------------------------------------------------------------------
class LocalExecutor:
    """One step at a time, in this process (a torchrun step in its own processes): no Ray needed."""

    slots = 1

    def __init__(self):
        self.queue: dict[str, tuple[Step, list[str]]] = {}

    def submit(self, step: Step, argv: list[str]) -> str:
        self.queue[step.name] = (step, argv)
        return step.name

    def wait(self, handles: list) -> tuple[str, str | None]:
        step, argv = self.queue.pop(handles[0])
        if step.procs > 1:
            try:
                return handles[0], run_subprocess(step, argv, os.getcwd())
            except StepKilled as exc:
                return handles[0], str(exc)
        return handles[0], run_in_process(step, argv)

    def close(self) -> None:
        pass


@contextlib.contextmanager
def open_executor(name: str, address: str = ""):
    check_executor(name)
    if name == "ray":
        from src.orchestration.ray_executor import RayExecutor

        executor = RayExecutor(address)
    else:
        executor = LocalExecutor()
    try:
        yield executor
    finally:
        executor.close()


# ---- the graph ---------------------------------------------------------------------------------------
def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def run_graph(steps: list[Step], ledger, executor, say=print) -> list[tuple[str, str, float]]:
    """Run the steps that are not up to date, each once the steps it depends on are done; return
    (step, status, seconds) rows. A failed step stops its dependents and, once the independent steps
    have finished, is a one-line DataError naming the step and its log."""
    deps, number = dependencies(steps), {s.name: i for i, s in enumerate(steps, 1)}
    status: dict[str, str] = {}
    seconds: dict[str, float] = {}
    errors: dict[str, str] = {}
    running: dict = {}  # handle -> (step, resumed, start)
    waiting, start = list(steps), time.perf_counter()

    def line(step: Step, text: str) -> None:
        say(f"[{number[step.name]}/{len(steps)}] {step.name}: {text}")

    while waiting or running:
        for step in list(waiting):
            blocked = sorted(d for d in deps[step.name] if status.get(d) in ("failed", "not run"))
            if blocked:
                waiting.remove(step)
                status[step.name] = "not run"
                line(step, f"not run ({blocked[0]} did not finish)")
            elif len(running) < executor.slots and deps[step.name] <= status.keys():
                waiting.remove(step)
                if ledger.up_to_date(step):
                    status[step.name] = "skipped"
                    line(step, "up to date, skipped")
                    continue
                argv, resumed = ledger.start(step)
                begin_log(step)
                line(step, f"python -m {step.module} {' '.join(argv)}")
                running[executor.submit(step, argv)] = (step, resumed, time.perf_counter())
        if not running:
            continue
        handle, error = executor.wait(list(running))
        step, resumed, began = running.pop(handle)
        now = time.perf_counter()
        seconds[step.name] = now - began
        if error is None:
            ledger.finish(step)
            status[step.name] = "resumed" if resumed else "ran"
        else:
            status[step.name], errors[step.name] = "failed", error
        left = len(steps) - len(status)
        slowest = min(running.values(), key=lambda r: r[2], default=None)
        tail = f", slowest running: {slowest[0].name} ({now - slowest[2]:.0f} s)" if slowest else ""
        outcome = f"failed ({error})" if error else "finished"
        line(step, f"{outcome} in {seconds[step.name]:.1f} s; {_clock(now - start)} elapsed, {left} left{tail}")
    if errors:
        name = next(iter(errors))
        failed = next(s for s in steps if s.name == name)
        others = len(errors) - 1
        raise DataError(f"step '{name}' failed ({errors[name]}): {last_line(failed)}; log: {failed.log or 'none'}"
                        + (f"; {others} more step(s) failed" if others else "")
                        + f"; {sum(v == 'not run' for v in status.values())} step(s) not run")
    return [(s.name, status[s.name], seconds.get(s.name, 0.0)) for s in steps]

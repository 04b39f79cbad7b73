"""The Ray executor: each step a Ray task (imported only when `--executor ray` is asked for).

A task takes the step's CPUs and, where the cluster has GPUs, its GPUs (Ray sets CUDA_VISIBLE_DEVICES);
it runs the stage command as a subprocess in the driver's working folder (every node sees the same
paths: a shared file system). A task whose worker dies, or whose command dies of a signal, is retried
up to RETRIES times; a retried training resumes from its last.pt (src.orchestration.execution.run_subprocess).
"""
from __future__ import annotations

import math
import os

from src.core.errors import DataError
from src.orchestration.execution import StepKilled, run_subprocess
from src.orchestration.steps import Step

RETRIES = 2


class RayExecutor:
    """Steps as Ray tasks on a local Ray instance (`address` empty) or a running cluster (auto, HOST:PORT)."""

    slots = math.inf

    def __init__(self, address: str = ""):
        try:
            import ray
        except ImportError:
            raise DataError("--executor ray: Ray is not installed (pip install -r requirements.txt)") from None
        self.ray = ray
        self.owned = not ray.is_initialized()
        if self.owned:
            try:
                ray.init(address=address or None, include_dashboard=False, configure_logging=False)
            except ConnectionError as exc:
                raise DataError(f"--address {address}: no Ray cluster there ({' '.join(str(exc).split())})") from None
        self.resources = ray.cluster_resources()
        self.task = ray.remote(run_subprocess)
        self.cwd = os.getcwd()

    def _gpus(self, step: Step) -> int:
        return step.gpus if self.resources.get("GPU", 0) > 0 else 0

    def submit(self, step: Step, argv: list[str]):
        for kind, wanted in (("CPU", step.cpus), ("GPU", self._gpus(step))):
            if wanted > self.resources.get(kind, 0):
                raise DataError(f"step '{step.name}' asks for {wanted} {kind}s; the Ray cluster has "
                                f"{self.resources.get(kind, 0):g}")
        return self.task.options(name=step.name, num_cpus=step.cpus, num_gpus=self._gpus(step), max_retries=RETRIES,
                                 retry_exceptions=[StepKilled]).remote(step, argv, self.cwd)

    def wait(self, handles: list) -> tuple[object, str | None]:
        [ready], _ = self.ray.wait(handles, num_returns=1)
        try:
            return ready, self.ray.get(ready)
        except self.ray.exceptions.RayError as exc:
            cause = "killed" if isinstance(getattr(exc, "cause", None), StepKilled) else type(exc).__name__
            return ready, f"{cause} after {RETRIES} retries"

    def close(self) -> None:
        if self.owned:
            self.ray.shutdown()

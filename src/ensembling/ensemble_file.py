"""An ensemble file, loaded: the record of src.core.artifacts with its parameters parsed and checked.
The kernel, submit, report and pipeline all read ensembles through `load_ensemble`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from src.core.artifacts import EnsembleRecord, read_ensemble
from src.core.errors import DataError
from src.ensembling.params import EnsembleParams


@dataclass(frozen=True)
class Ensemble:
    """A loaded ensemble.json."""

    file: EnsembleRecord
    params: EnsembleParams

    @property
    def runs(self) -> list[dict]:
        return self.file.runs

    @property
    def gate(self) -> dict | None:
        return self.file.gate

    @property
    def crop(self) -> dict | None:
        return self.file.crop

    @property
    def record(self) -> dict:
        return self.file.record

    def run_paths(self) -> list[str]:
        """Every run the ensemble needs at test time (members, their gate and crop runs, its own)."""
        return self.file.run_paths()


def load_ensemble(path: str | Path) -> Ensemble:
    file = read_ensemble(path)
    params = EnsembleParams.from_dict(file.params, str(file.path))
    names = [r.get("name") for r in file.runs]
    if sorted(names) != sorted(params.weights):
        raise DataError(f"{file.path}: runs {names} do not match the weighted models {sorted(params.weights)}")
    return Ensemble(file, params)

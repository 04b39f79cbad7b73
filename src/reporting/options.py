"""What `python -m src.report` was asked: `build_report(ReportOptions(...))`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from src.core.errors import DataError


@dataclass(frozen=True, kw_only=True)
class ReportOptions:
    runs: tuple[Path, ...] = field(metadata={"help": "run folders (runs/<name>)", "nargs": "+"})
    ensemble: Path | None = field(default=None, metadata={"help": "ensemble.json whose scores to show"})
    cache_dir: Path | None = field(default=None, metadata={
        "help": "cache with images and masks (default: each run's)"})
    data_dir: Path | None = field(default=None, metadata={"help": "dataset whose default cache to use"})
    title: str | None = field(default=None, metadata={"help": "page title (default: names the runs)"})
    out: Path = field(metadata={"help": "report folder, e.g. reports/NAME"})
    allow_incomplete: bool = field(default=False, metadata={
        "help": "report folds without their done marker (unfinished runs), with a warning"})

    def __post_init__(self):
        object.__setattr__(self, "runs", tuple(Path(r) for r in self.runs))
        object.__setattr__(self, "out", Path(self.out))
        if not self.runs:
            raise DataError("--runs: name at least one run")

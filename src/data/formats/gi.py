"""The UW-Madison GI tract Kaggle layout, as a format: volumes of 16-bit slices per case-day, three
overlapping classes in train.csv. Its volumes are read by src.data.layout and src.data.preparation."""
from __future__ import annotations

from pathlib import Path

from src.data.description import DatasetDescription
from src.data.layout import CASE_DAY_RE, CLASSES


class GITractFormat:
    name = "gi"
    looked_for = "train.csv or <split>/case<N>/case<N>_day<D>/scans/"
    marker = "train.csv"
    submission = "gi_csv"

    def detect(self, root: Path) -> bool:
        if (root / "train.csv").is_file():
            return True
        return any(CASE_DAY_RE.match(p.name) for split in ("train", "test") for p in (root / split).glob("case*/case*_day*"))

    def describe(self, root: Path) -> DatasetDescription:
        return DatasetDescription(
            name=Path(root).resolve().name, format=self.name, dims="slices", channels=("mri",), labels=CLASSES,
            encoding="overlapping", metric="gi_tract", submission=self.submission, file_ending=".png", group_key="case")


FORMAT = GITractFormat()

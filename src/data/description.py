"""The dataset description: what every stage needs to know about a dataset, read from its files.

A format's reader (src.data.formats) builds it from the data; `src.prepare` writes it into the cache
as description.json, and every later stage reads classes, channels, metric and formats from there.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from src.core.artifacts import description_path
from src.core.atomic import write_json_atomic
from src.core.errors import DataError
from src.core.readers import read_json_object

DIMS = ("2d", "slices")  # one image per sample; or volumes of slices (the GI case-days)
ENCODINGS = ("binary", "index", "overlapping")  # one class 0/1; an index map 0..K; K independent masks
METRICS = ("gi_tract", "dice")  # the GI competition's 0.4 Dice + 0.6 Hausdorff; Dice per image (Carvana)
SUBMISSIONS = ("gi_csv", "carvana_csv", "label_images")
DESCRIPTION_VERSION = 1


@dataclass(frozen=True)
class DatasetDescription:
    """One dataset, as its files say.

    `labels` are the foreground classes (background excluded): for an index map, value k + 1 of the
    label image is labels[k]; for a binary mask the one class is labels[0]. `group_key` names the
    sample attribute that keeps samples in one fold (the case, the car; None: every sample alone);
    `stratify_key` the attribute the folds are balanced over (the image category; None).
    """

    name: str
    format: str
    dims: str
    channels: tuple[str, ...]
    labels: tuple[str, ...]
    encoding: str
    metric: str
    submission: str
    file_ending: str
    group_key: str | None = None
    stratify_key: str | None = None

    def __post_init__(self):
        where = f"dataset {self.name!r}"
        for name, value, allowed in (("dims", self.dims, DIMS), ("encoding", self.encoding, ENCODINGS),
                                     ("metric", self.metric, METRICS), ("submission", self.submission, SUBMISSIONS)):
            if value not in allowed:
                raise DataError(f"{where}: {name} {value!r} is not one of {', '.join(allowed)}")
        for name, names in (("channels", self.channels), ("labels", self.labels)):
            if not names or not all(isinstance(n, str) and n for n in names):
                raise DataError(f"{where}: {name} must be a non-empty list of names, got {list(names)!r}")
            if len(set(names)) != len(names):
                raise DataError(f"{where}: {name} {list(names)} name one thing twice")
        if self.encoding == "binary" and len(self.labels) != 1:
            raise DataError(f"{where}: a binary encoding has one label, got {list(self.labels)}")

    @property
    def n_classes(self) -> int:
        return len(self.labels)

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def to_dict(self) -> dict:
        return {"version": DESCRIPTION_VERSION, **{k: list(v) if isinstance(v, tuple) else v
                                                   for k, v in asdict(self).items()}}

    @classmethod
    def from_dict(cls, data: dict, source: str | Path) -> DatasetDescription:
        """The description of a description.json's object; DataError naming `source` on an unknown or
        missing key, another version, or a bad value."""
        data = dict(data)
        version = data.pop("version", None)
        if version != DESCRIPTION_VERSION:
            raise DataError(f"{source}: description version {version!r}, this code reads {DESCRIPTION_VERSION}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"{source}: unknown key(s) {', '.join(unknown)}")
        required = {f.name for f in fields(cls) if f.default is not None}
        missing = sorted(required - set(data))
        if missing:
            raise DataError(f"{source}: missing key(s) {', '.join(missing)}")
        for key in ("channels", "labels"):
            if not isinstance(data[key], list):
                raise DataError(f"{source}: {key} must be a list of names")
            data[key] = tuple(data[key])
        try:
            return cls(**data)
        except DataError as exc:
            raise DataError(f"{source}: {exc}") from None


def write_description(cache_dir: str | Path, description: DatasetDescription) -> None:
    """Write the cache's description, atomically; an unchanged one is left untouched."""
    path = description_path(cache_dir)
    try:
        if path.is_file() and read_json_object(path) == description.to_dict():
            return
    except DataError:  # a corrupt one is rewritten
        pass
    write_json_atomic(path, description.to_dict())


def read_description(cache_dir: str | Path) -> DatasetDescription:
    """The description a cache was prepared with; a one-line error when there is none."""
    path = description_path(cache_dir)
    if not path.is_file():
        raise DataError(f"{path}: no dataset description (run python -m src.prepare --data-dir DATA)")
    return DatasetDescription.from_dict(read_json_object(path, "dataset description"), path)

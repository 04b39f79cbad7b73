"""Reader of the nnU-Net v2 raw format, 2D endings only: `dataset.json`, `imagesTr/<case>_<XXXX><ending>`
(one file per channel XXXX = 0000..), `labelsTr/<case><ending>` and `imagesTs/<case>_<XXXX><ending>`.

dataset.json gives `channel_names` {"0": ..., "N-1": ...}, `labels` {"background": 0, name: 1..K},
`numTraining` and `file_ending`. Region-based labels and 3D NIfTI are not supported (yet): DataErrors.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.core.errors import DataError
from src.core.readers import read_json_object
from src.data.description import DatasetDescription
from src.data.formats.base import Sample, SampleList
from src.data.formats.files import image_files
from src.data.formats.pixels import check_same_size, read_channels, read_label_map
from src.data.layout import MAX_IMAGE_PIXELS

ENDINGS = (".png", ".tif", ".tiff", ".jpg")
REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
CHANNEL_FILE_RE = re.compile(r"^(.+)_(\d{4})$")


@dataclass(frozen=True)
class DatasetJson:
    """What dataset.json says, checked."""

    path: Path
    name: str
    channels: tuple[str, ...]
    labels: tuple[str, ...]
    n_training: int
    file_ending: str


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_dataset_json(root: Path) -> DatasetJson:
    """dataset.json of `root`; a one-line DataError naming it when a key is missing or malformed."""
    path = root / "dataset.json"
    data = read_json_object(path, "dataset.json")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}")
    names, labels, n_training, ending = (data[k] for k in REQUIRED_KEYS)
    if not isinstance(names, dict) or set(names) != {str(i) for i in range(len(names))}:
        raise DataError(f"{path}: channel_names must map \"0\"..\"N-1\" to names, got {names!r}")
    if not isinstance(labels, dict):
        raise DataError(f"{path}: labels must map names to values, got {labels!r}")
    region = next((name for name, value in labels.items() if isinstance(value, list)), None)
    if region is not None:
        raise DataError(f"{path}: region-based labels ({region!r}: a list of values) are not supported")
    if labels.get("background") != 0 or not all(_is_int(v) for v in labels.values()):
        raise DataError(f"{path}: labels must map \"background\" to 0 and each class to an integer, got {labels!r}")
    classes = sorted((value, name) for name, value in labels.items() if name != "background")
    if [value for value, _ in classes] != list(range(1, len(classes) + 1)):
        raise DataError(f"{path}: label values {[v for v, _ in classes]} are not 1..K consecutive")
    if not _is_int(n_training) or n_training < 0:
        raise DataError(f"{path}: numTraining must be a count, got {n_training!r}")
    if ending in (".nii.gz", ".nii"):
        raise DataError(f"{path}: file_ending {ending!r}: 3D NIfTI is not supported yet")
    if ending not in ENDINGS:
        raise DataError(f"{path}: file_ending {ending!r} is not one of {', '.join(ENDINGS)}")
    name = data.get("name")
    return DatasetJson(path, name if isinstance(name, str) and name else root.resolve().name,
                       tuple(names[str(i)] for i in range(len(names))), tuple(c for _, c in classes), n_training, ending)


def _files(folder: Path, inside: Path, ending: str) -> dict[str, Path]:
    """image_files of `folder`, each of dataset.json's file ending (DataError naming the file otherwise)."""
    found = image_files(folder, inside)
    for path in found.values():
        if path.suffix.lower() != ending:
            raise DataError(f"{path}: ending is not dataset.json's file_ending {ending}")
    return found


def _cases(folder: Path, inside: Path, spec: DatasetJson) -> dict[str, tuple[Path, ...]]:
    """The cases of an images folder with their channel files in channel order; DataError naming the file
    that is misnamed, of a channel beyond dataset.json's, or missing."""
    n = len(spec.channels)
    cases: dict[str, dict[int, Path]] = {}
    for stem, path in _files(folder, inside, spec.file_ending).items():
        m = CHANNEL_FILE_RE.match(stem)
        if not m:
            raise DataError(f"{path}: file name is not <case>_<XXXX>{spec.file_ending}")
        channel = int(m.group(2))
        if channel >= n:
            raise DataError(f"{path}: channel {m.group(2)} but {spec.path} names {n} channel(s)")
        cases.setdefault(m.group(1), {})[channel] = path
    for case, channels in cases.items():
        missing = next((i for i in range(n) if i not in channels), None)
        if missing is not None:
            raise DataError(f"{folder / f'{case}_{missing:04d}{spec.file_ending}'}: channel file missing "
                            f"({spec.path} names {n} channel(s))")
    return {case: tuple(channels[i] for i in range(n)) for case, channels in sorted(cases.items())}


@dataclass(frozen=True)
class NnunetFormat:
    max_pixels: int = MAX_IMAGE_PIXELS  # the cap of every image and label read (src.data.formats.base)
    name = "nnunet"
    label_scale = 1
    looked_for = "dataset.json and imagesTr/"
    marker = "dataset.json"
    submission = "label_images"

    def detect(self, root: Path) -> bool:
        return (Path(root) / "dataset.json").is_file() and (Path(root) / "imagesTr").is_dir()

    def describe(self, root: Path) -> DatasetDescription:
        spec = read_dataset_json(Path(root))
        try:
            return DatasetDescription(name=spec.name, format=self.name, dims="2d", channels=spec.channels,
                                      labels=spec.labels, encoding="binary" if len(spec.labels) == 1 else "index",
                                      metric="dice", submission=self.submission, file_ending=spec.file_ending)
        except DataError as exc:
            raise DataError(f"{spec.path}: {exc}") from None

    def samples(self, root: Path, split: str) -> SampleList:
        """"train": the cases of labelsTr and imagesTr, every one with all channel files and its label, as
        many as numTraining (DataError naming the file otherwise); "test": the cases of imagesTs."""
        root = Path(root)
        if split != "train":
            return self.folder_samples(root, root / "imagesTs")
        spec = read_dataset_json(root)
        inside = root.resolve()
        cases = _cases(root / "imagesTr", inside, spec)
        labels = _files(root / "labelsTr", inside, spec.file_ending)
        orphan = next((path for case, path in labels.items() if case not in cases), None)
        if orphan is not None:
            raise DataError(f"{orphan}: label without images in {root / 'imagesTr'}")
        unlabelled = next((files[0] for case, files in cases.items() if case not in labels), None)
        if unlabelled is not None:
            raise DataError(f"{unlabelled}: image without a label in {root / 'labelsTr'}")
        if len(cases) != spec.n_training:
            raise DataError(f"{spec.path}: numTraining {spec.n_training} but imagesTr and labelsTr hold "
                            f"{len(cases)} case(s)")
        return SampleList([Sample(id=case, images=files, label=labels[case], group=case)
                           for case, files in cases.items()])

    def folder_samples(self, root: Path, folder: Path) -> SampleList:
        """The cases of `folder`, each with all its channel files `<case>_<XXXX><ending>` (as imagesTs)."""
        cases = _cases(Path(folder), Path(folder).resolve(), read_dataset_json(Path(root)))
        return SampleList([Sample(id=case, images=files, group=case) for case, files in cases.items()])

    def read_image(self, sample: Sample, description: DatasetDescription) -> np.ndarray:
        """The channel files stacked to (H, W, C); each must be single-channel and of the first one's size."""
        channels = [read_channels(path, 1, self.max_pixels) for path in sample.images]
        for path, array in zip(sample.images[1:], channels[1:]):
            check_same_size(path, array.shape, sample.images[0], channels[0].shape)
        return np.concatenate(channels, axis=2)

    def read_label(self, sample: Sample, description: DatasetDescription) -> np.ndarray:
        return read_label_map(sample.label, sample.images[0], description.n_classes, self.max_pixels)


FORMAT = NnunetFormat()

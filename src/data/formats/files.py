"""Listing a folder's image files by name, without decoding them: the rules every format's listing shares."""
from __future__ import annotations

from pathlib import Path

from src.core.errors import DataError
from src.data.formats.base import IMAGE_ENDINGS, Sample, SampleList
from src.data.layout import check_regular_file


def image_files(folder: Path, inside: Path, recursive: bool = False) -> dict[str, Path]:
    """The image files of `folder` (an ending of IMAGE_ENDINGS, in any case) by their name without the ending,
    sorted by name; {} when there is no such folder. Hidden files and files of other endings are skipped.
    `recursive`: also those of its subfolders (not hidden ones), named by their path relative to `folder`
    ('/'-separated) without the ending: the ids of EBHI's `<category>/<name>`.

    DataError naming both files when two images share one name (a.png and a.PNG, a.png and a.tif), naming
    the file when it is not a regular file whose real path lies in `inside` (the resolved dataset folder).
    """
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or path.suffix.lower() not in IMAGE_ENDINGS:
            continue
        check_regular_file(path, inside)
        name = relative.as_posix()[:-len(path.suffix)]
        if name in found:
            raise DataError(f"{path}: a second image named {name!r} besides {found[name].name}")
        found[name] = path
    return dict(sorted(found.items()))


def single_file_samples(folder: Path) -> SampleList:
    """One sample per image file of `folder` and its subfolders (RGB or gray: one file per sample), its id
    the file's relative path without the ending."""
    files = image_files(folder, folder.resolve(), recursive=True)
    return SampleList([Sample(name, (path,), group=name) for name, path in files.items()])

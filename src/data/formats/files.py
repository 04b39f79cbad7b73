"""Listing a folder's image files by name, without decoding them: the rules every format's listing shares."""
from __future__ import annotations

from pathlib import Path

from src.core.errors import DataError
from src.data.formats.base import IMAGE_ENDINGS
from src.data.layout import check_regular_file


def image_files(folder: Path, inside: Path) -> dict[str, Path]:
    """The image files of `folder` (an ending of IMAGE_ENDINGS, in any case) by their name without the ending,
    sorted by name; {} when there is no such folder. Hidden files and files of other endings are skipped.

    DataError naming both files when two images share one name (a.png and a.PNG, a.png and a.tif), naming
    the file when it is not a regular file whose real path lies in `inside` (the resolved dataset folder).
    """
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_ENDINGS:
            continue
        check_regular_file(path, inside)
        name = path.name[:-len(path.suffix)]
        if name in found:
            raise DataError(f"{path}: a second image named {name!r} besides {found[name].name}")
        found[name] = path
    return dict(sorted(found.items()))

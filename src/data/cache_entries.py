"""Cache entries, whatever they hold (a case-day volume, one 2D image): written arrays first and
meta.json last with the arrays' fingerprints, verified before they are trusted, rewritten only when
their source changed, removed when their source vanished."""
from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from src.core.artifacts import CacheEntryFiles
from src.core.atomic import remove_dir, save_npy_atomic, write_json_atomic
from src.core.errors import DataError
from src.core.readers import read_json

Build = Callable[[], tuple[np.ndarray, np.ndarray | None, dict]]  # -> image, mask (None: unlabelled), meta


def array_fingerprint(array: np.ndarray) -> dict:
    """Shape, dtype and CRC-32 of an array's bytes: recorded when cached, checked before it is trusted."""
    data = np.ascontiguousarray(array)
    return {"shape": list(data.shape), "dtype": str(data.dtype), "crc32": zlib.crc32(memoryview(data).cast("B"))}


def write_entry(files: CacheEntryFiles, image: np.ndarray, mask: np.ndarray | None, meta: dict) -> None:
    """Write one entry (arrays as given, then meta.json with their fingerprints), each file atomically."""
    files.folder.mkdir(parents=True, exist_ok=True)
    image = np.ascontiguousarray(image)
    save_npy_atomic(files.image, image)
    arrays = {"image": array_fingerprint(image)}
    if mask is not None:
        mask = np.ascontiguousarray(mask, dtype=np.uint8)
        save_npy_atomic(files.mask, mask)
        arrays["mask"] = array_fingerprint(mask)
    write_json_atomic(files.meta, {**meta, "arrays": arrays})


def read_entry_meta(files: CacheEntryFiles) -> dict | None:
    """An entry's meta.json; None when absent. A corrupt one is a one-line error."""
    path = files.meta
    if not path.exists():
        return None
    try:
        meta = read_json(path, "cache entry")
    except DataError as exc:  # "<path>: unreadable cache entry (why)"
        why = str(exc).removeprefix(f"{path}: unreadable cache entry ")
        raise DataError(f"{path}: corrupt cache entry {why}; run python -m src.prepare to rewrite it") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: corrupt cache entry (not an object); run python -m src.prepare to rewrite it")
    return meta


def verify_entry(files: CacheEntryFiles, meta: dict) -> bool:
    """Whether the entry's arrays are exactly the ones whose fingerprints meta.json recorded."""
    recorded = meta.get("arrays")
    if not isinstance(recorded, dict) or "image" not in recorded:
        return False
    for name, path in (("image", files.image), ("mask", files.mask)):
        if name not in recorded:
            continue
        try:
            found = array_fingerprint(np.load(path, mmap_mode="r"))
        except (OSError, ValueError):
            return False
        if found != recorded[name]:
            return False
    return True


def refresh_entry(files: CacheEntryFiles, fingerprint: dict, labelled: bool, build: Build) -> str:
    """Keep the entry if its recorded source `fingerprint` matches and its arrays verify ("skipped");
    otherwise delete it, `build` it anew and write it ("written"). `fingerprint` is taken before the
    source is read, so a change while reading shows up on the next run."""
    try:
        meta = read_entry_meta(files)
    except DataError:  # a corrupt entry is rewritten
        meta = None
    arrays = [files.image] + ([files.mask] if labelled else [])
    if (meta is not None and meta.get("source") == fingerprint and all(a.is_file() for a in arrays)
            and verify_entry(files, meta)):
        return "skipped"
    try:
        image, mask, meta = build()
    finally:  # the old entry is stale whether or not the new source reads cleanly
        if files.folder.exists() or files.folder.is_symlink():
            remove_dir(files.folder)
    write_entry(files, image, mask, {**meta, "source": fingerprint})
    return "written"


def remove_vanished(split_dir: Path, keep: set[str], pattern: re.Pattern) -> int:
    """Delete the entry folders of `split_dir` whose name matches `pattern` but is not in `keep`; only
    folders holding an entry's meta.json, so a cache folder pointed at a user's folder deletes nothing else."""
    if not split_dir.is_dir():
        return 0
    stale = [p for p in split_dir.iterdir() if p.is_dir() and pattern.match(p.name) and p.name not in keep
             and CacheEntryFiles(p).meta.is_file()]
    for path in stale:
        remove_dir(path)
    return len(stale)

"""Atomic writes: a temporary file beside the target, renamed onto it only when complete."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from src.core.errors import DataError


def ensure_folder(folder: str | os.PathLike) -> Path:
    """Create `folder` (and its parents); a one-line error when a file stands where a folder must be."""
    folder = Path(folder)
    for path in (folder, *folder.parents):
        if path.exists() and not path.is_dir():
            raise DataError(f"{folder}: {path} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _check_file_target(target: Path) -> None:
    if target.is_dir():
        raise DataError(f"{target}: is a folder, expected a file path")
    ensure_folder(target.parent)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    _check_file_target(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json_atomic(target: str | os.PathLike, obj) -> None:
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_npy_atomic(target: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(target, suffix=".npy") as tmp:
        np.save(tmp, array)


def staging_dir(target: str | os.PathLike, suffix: str = ".staging") -> Path:
    """A new empty hidden sibling folder of `target`, named uniquely, with the permissions mkdir gives:
    where a complete output is built before swap_dir puts it in place. Never an existing folder."""
    target = Path(target)
    ensure_folder(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700
    return tmp


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM):  # a file system or kernel without it
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def swap_dir(staging: str | os.PathLike, final: str | os.PathLike) -> None:
    """Make the complete folder `staging` the new `final`; the old `final` goes last. Where the OS
    can, the two are exchanged in one step, so `final` is at every moment the old or the new folder;
    elsewhere the old one waits in a new uniquely named hidden sibling. No other folder is ever removed."""
    staging, final = Path(staging), Path(final)
    if not final.exists():
        staging.rename(final)
        return
    if _exchange(staging, final):  # `staging` now holds the old folder
        shutil.rmtree(staging, ignore_errors=True)
        return
    old = staging_dir(final, suffix=".old")
    final.rename(old)  # onto the empty folder just made
    try:
        staging.rename(final)
    except BaseException:
        old.rename(final)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; it replaces `target` only if the block succeeds."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise DataError(f"{target}: exists and is not a folder")
    tmp = staging_dir(target)
    try:
        yield tmp
        swap_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_dir(folder: str | os.PathLike) -> None:
    """Delete a folder the project wrote; a symbolic link or a file in its place is a one-line error
    naming it (never followed, never deleted)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        raise DataError(f"{folder}: expected a folder, found {'a symbolic link' if folder.is_symlink() else 'a file'}; "
                        "remove it")
    shutil.rmtree(folder)


def check_writable(target: str | os.PathLike) -> None:
    """Fail now, with a one-line error, if `target` cannot be written (before a long computation).
    Leaves `target` itself untouched."""
    target = Path(target)
    _check_file_target(target)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=target.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataError(f"{target}: cannot write here ({exc.strerror or exc})") from None

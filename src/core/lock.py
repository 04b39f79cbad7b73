"""One writer at a time: an advisory OS lock (flock) on a lock file beside what is written.

The OS releases the lock when its process dies (kill -9 included), so a lock is never stale; the
file itself stays (removing it would let two processes lock two different files). The holder writes
its pid, host and command into the file, and a refused writer names it.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from src.core.atomic import ensure_folder
from src.core.errors import DataError


def holder_line(path: Path) -> str:
    """Who holds the lock at `path`, as written by its holder (or 'an unknown process')."""
    try:
        who = json.loads(path.read_text())
        return f"pid {who['pid']} on {who['host']} since {who['since']} ({who['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str, wait: bool = False) -> Iterator[None]:
    """Hold the lock at `path` for the block. Held by another process: a DataError naming `what`
    and the holder, at once; with `wait` (for writes of a moment), wait for it instead."""
    path = Path(path)
    ensure_folder(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"{path}: {what} is being written by {holder_line(path)}; "
                            "one writer at a time") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join([sys.executable, *sys.argv])}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(holder) + "\n").encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock

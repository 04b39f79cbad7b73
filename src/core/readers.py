"""The one reader of the JSON and TOML files a user hands us (recipes, ensemble files, run configs,
manifests, cache entries): a file that is missing, unreadable, malformed or nested deeper than
MAX_DEPTH is a one-line DataError naming it, never a RecursionError."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Callable

from src.core.errors import DataError

MAX_DEPTH = 64  # levels of nested arrays/objects; the project's own files nest at most 6 deep


def _depth(value: Any) -> int:
    """How deeply lists and dicts nest in `value` (iteratively: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                stack += [(child, level + 1) for child in (item.values() if isinstance(item, dict) else item)]
    return deepest


def _read(path: str | Path, what: str, parse: Callable[[str], Any], errors: tuple[type[Exception], ...],
          malformed: str) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable {what} ({type(exc).__name__}: {exc})") from None
    too_deep = DataError(f"{path}: unreadable {what} (nested deeper than {MAX_DEPTH} levels)")
    try:
        value = parse(text)
    except errors as exc:
        raise DataError(f"{path}: {malformed} ({type(exc).__name__}: {exc})") from None
    except RecursionError:
        raise too_deep from None
    if _depth(value) > MAX_DEPTH:
        raise too_deep
    return value


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """The parsed JSON of `path`; a one-line DataError naming it and `what` it is otherwise."""
    return _read(path, what, json.loads, (json.JSONDecodeError,), f"unreadable {what}")


def read_json_object(path: str | Path, what: str = "JSON file") -> dict:
    """read_json, and the top level must be an object."""
    value = read_json(path, what)
    if not isinstance(value, dict):
        raise DataError(f"{path}: {what} is not a JSON object")
    return value


def read_toml(path: str | Path, what: str = "TOML file") -> dict:
    """The parsed TOML of `path` (a table); a one-line DataError naming it otherwise."""
    return _read(path, what, tomllib.loads, (tomllib.TOMLDecodeError,), f"{what} is not valid TOML")

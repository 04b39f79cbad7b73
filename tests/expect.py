"""Assertions shared by the fault tests of the dataset formats."""
from __future__ import annotations

from pathlib import Path

import pytest

from src.core.errors import DataError


def fault(func, *args, names: Path | str | list, says: str = "", match: str | None = None) -> str:
    """Call func; expect a one-line DataError naming every path or text of `names`, containing `says`
    and matching the regex `match`; return the message."""
    with pytest.raises(DataError, match=match) as info:
        func(*args)
    message = str(info.value)
    assert "\n" not in message and says in message, message
    for name in names if isinstance(names, list) else [names]:
        assert str(name) in message, (name, message)
    return message

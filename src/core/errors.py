"""The project's one error type for bad input, and the CLI wrapper that prints it as one line."""
from __future__ import annotations

import sys
from typing import Callable


class DataError(Exception):
    """Bad input: the message names the file (or row) and what is wrong; printed as one line."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a stage's main; a DataError becomes `error: <message>` on stderr and exit code 2."""
    try:
        code = main(argv)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)

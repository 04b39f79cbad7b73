"""The project's one error type for bad input, and the CLI wrapper that prints it as one line."""
from __future__ import annotations

import sys
from typing import Callable


class DataError(Exception):
    """Bad input: the message names the file (or row) and what is wrong; printed as one line."""


def os_error_line(exc: OSError) -> str:
    """An OSError (disk full, a folder where a file is expected, no permission, ...) as one line
    naming the file."""
    where = exc.filename if exc.filename is not None else "?"
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    return f"{where}: {exc.strerror or exc}"


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a stage's main; an expected failure (a DataError, or an OSError of the file system) becomes
    one line `error: <file>: <what>` on stderr and exit code 2; Ctrl-C is `error: interrupted` and exit
    code 130 (the atomic writers have removed their temporaries on the way out). Anything else is a
    bug: a traceback."""
    try:
        code = main(argv)
    except DataError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        print(f"error: {' '.join(os_error_line(exc).split())}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)

"""Options and configs as CLI flags, defined once: each field of a frozen dataclass is its flag.

A field `img_size: int = field(default=256, metadata={"help": "..."})` is the flag `--img-size`, typed
by its annotation: int, float, str, Path, bool (`--x` when it defaults to False, else `--x/--no-x`),
optional (`X | None`), tuples (one token, comma-separated; "none" is the empty tuple). Metadata may
add "help" (inherited from a base class's field of the same name), "choices", "metavar",
"nargs": "+" (a tuple as one token per element), "append": True (a tuple of one element per use of
the repeated flag), "parse" (the converter of a token, raising DataError, for a value its annotation
does not type), "positional", and "flag" (a name other than the field's). The entry point builds its
options from the parsed flags by keyword (`from_args`); `to_flags` turns an options dict back into flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any

from src.core.errors import DataError

_SCALARS = (bool, int, float, str, Path)


def flag(name: str) -> str:
    """`img_size` -> `--img-size`."""
    return "--" + name.replace("_", "-")


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _kind(cls: type, name: str) -> tuple[type, type | None]:
    """(scalar type, None) or (tuple, element type) of a field, optional or not."""
    hint = _hints(cls)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return tuple, typing.get_args(hint)[0]
    if hint not in _SCALARS:
        raise TypeError(f"{cls.__name__}.{name}: no flag for the type {hint}")
    return hint, None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _help(cls: type, name: str) -> str | None:
    """The field's help, else that of the nearest base class's field of the same name."""
    for klass in cls.__mro__:
        fields = getattr(klass, "__dataclass_fields__", {})
        if name in fields and "help" in fields[name].metadata:
            return fields[name].metadata["help"]
    return None


def _tuple_of(element: type, name: str):
    """A converter of "v1,v2" ("none": empty); a bad value is a one-line DataError naming the flag."""
    def convert(text: str) -> tuple:
        if text.strip().lower() == "none":
            return ()
        try:
            return tuple(element(v.strip()) for v in text.split(",") if v.strip())
        except ValueError:
            raise DataError(f"{name} {text!r}: expected comma-separated {element.__name__} values or 'none'") from None
    return convert


def _boolean(text: str) -> bool:
    word = text.strip().lower()
    if word not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(text)
    return word in ("true", "1", "yes")


def _converter(cls: type, name: str):
    if "parse" in cls.__dataclass_fields__[name].metadata:
        return cls.__dataclass_fields__[name].metadata["parse"]
    kind, element = _kind(cls, name)
    if kind is tuple:
        return _tuple_of(element, cls.__dataclass_fields__[name].metadata.get("flag", flag(name)))
    return _boolean if kind is bool else kind


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, defaults: dict[str, Any] | None = None,
                  given_only: bool = False) -> None:
    """One flag per field of `cls`. `defaults` overrides a field's default on the command line only;
    with `given_only` every flag defaults to None (only the flags given override, see `from_args`),
    its help naming the field's default, and a bool is always `--x/--no-x`."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        kind, element = (None, None) if "parse" in meta else _kind(cls, f.name)
        help_text = _help(cls, f.name)
        default = (defaults or {}).get(f.name, _default(f)) if _has_default(f) else None
        if given_only:
            help_text = f"{help_text + ' ' if help_text else ''}(default: {default})"
        # an appended flag starts from None (argparse appends to its default): `from_args` keeps the field's
        kwargs: dict[str, Any] = {"help": help_text, "default": None if given_only or meta.get("append") else default}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if given_only or default else "store_true"
        else:
            one_per_token = element is not None and (meta.get("nargs") or meta.get("append"))
            kwargs["type"] = element if one_per_token else _converter(cls, f.name)
            kwargs.update({k: meta[k] for k in ("choices", "metavar", "nargs") if k in meta})
            if meta.get("append"):
                kwargs["action"] = "append"
        if meta.get("positional"):
            parser.add_argument(f.name, **kwargs)
        else:
            parser.add_argument(meta.get("flag", flag(f.name)), dest=f.name,
                                required=not given_only and not _has_default(f), **kwargs)


def from_args(cls: type, args: argparse.Namespace, base: dict[str, Any] | None = None):
    """`cls` by keyword from `base` (e.g. a recipe), then every flag that is not None."""
    values = dict(base or {})
    for f in dataclasses.fields(cls):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = tuple(given) if isinstance(given, list) else given
    return cls(**values)


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str):
        raise DataError(message)


def parse_flags(cls: type, tokens: list[str] | tuple[str, ...], what: str) -> tuple[dict[str, Any], list[str]]:
    """Flags of `cls`'s fields -> ({field: value} of those given, the tokens that are not its flags);
    a bad value is a DataError naming `what` and the flag."""
    parser = _RaisingParser(prog=what, add_help=False, allow_abbrev=False)
    add_arguments(parser, cls, given_only=True)
    try:
        args, rest = parser.parse_known_args(list(tokens))
    except DataError as exc:
        raise DataError(f"{what}: {exc}") from None
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name) is not None}
    return given, rest


def parse_value(cls: type, name: str, text: str) -> Any:
    """One value of the field `name` from its text (a bool from true/false); a DataError names the flag."""
    try:
        return _converter(cls, name)(text)
    except ValueError:
        raise DataError(f"{flag(name)} {text!r}: expected {_kind(cls, name)[0].__name__}") from None


def changed(options) -> dict[str, Any]:
    """The fields of a dataclass instance that differ from their defaults (fields without one always)."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
            if not _has_default(f) or getattr(options, f.name) != _default(f)}


def to_flags(options: dict[str, Any]) -> list[str]:
    """{"img_size": 128, "amp": False, "tta": ("a", "b")} -> ["--img-size", "128", "--no-amp", "--tta", "a,b"]
    (the one dict-to-flags rule: tuples comma-separated, None leaves its flag out)."""
    out: list[str] = []
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out.append(flag(key) if value else "--no-" + flag(key)[2:])
        elif isinstance(value, (list, tuple)):
            out += [flag(key), ",".join(str(v) for v in value)]
        else:
            out += [flag(key), str(value)]
    return out

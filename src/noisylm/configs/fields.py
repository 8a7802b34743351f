"""Config dataclass fields that document and check themselves.

Each field carries a one-line doc and, optionally, a check on its value::

    @dataclass
    class RunConfig:
        steps: int = setting(100, "optimizer steps", at_least(1))
        mode: str = setting("fast", "how to run: `fast` or `exact`", one_of(("fast", "exact")))

        def __post_init__(self) -> None:
            validate(self)  # types, then checks: one UsageError line naming field, value and what is allowed

The docs feed ``--help`` (`help_text`) and the README's field tables (`field_table`). A table sits
between ``<!-- fields:noisylm.training.TrainConfig -->`` and ``<!-- /fields -->``;
``python -m noisylm.configs README.md`` regenerates every such table (``--check``: only report stale
ones). Stdlib only, so building a CLI parser from these fields stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from noisylm.errors import UsageError

_MISSING: Any = dataclasses.MISSING


@dataclass(frozen=True)
class Check:
    """A rule on a field's value: ``holds(value)`` says whether it is allowed, ``allowed`` says what is.

    ``allowed`` completes "NAME must be ...", e.g. ">= 1" or "in [0, 1)". None values are not checked
    (a field that may be None says so in its type).
    """

    allowed: str
    holds: Callable[[Any], bool]
    choices: tuple[Any, ...] | None = None  # for one_of: lets a CLI show them as the metavar
    # The whole error line for a bad value, where "NAME must be ALLOWED, got VALUE" is not the best one.
    message: Callable[[Any], str] | None = None


def at_least(low: float) -> Check:
    return Check(f">= {low}", lambda value: value >= low)


def above(low: float) -> Check:
    return Check(f"> {low}", lambda value: value > low)


def between(low: float, high: float, *, include_low: bool = True, include_high: bool = False) -> Check:
    """``low <= value < high`` by default (the ends as in Python's ranges); NaN never passes."""
    interval = f"{'[' if include_low else '('}{low}, {high}{']' if include_high else ')'}"

    def holds(value: Any) -> bool:
        above_low = value >= low if include_low else value > low
        below_high = value <= high if include_high else value < high
        return above_low and below_high

    return Check(f"in {interval}", holds)


def one_of(choices: Iterable[Any], message: Callable[[Any], str] | None = None) -> Check:
    choices = tuple(choices)
    return Check(
        f"one of {{{', '.join(map(str, choices))}}}", lambda value: value in choices, choices, message
    )


def rule(problem: Callable[[Any], str | None]) -> Check:
    """A check that ``problem(value)`` names: None when the value is fine, else the one-line error."""
    return Check("valid", lambda value: problem(value) is None, message=lambda value: problem(value) or "")


def setting(
    default: Any = _MISSING,
    doc: str = "",
    check: Check | None = None,
    *,
    default_factory: Callable[[], Any] = _MISSING,
) -> Any:
    """A dataclass field with its one-line ``doc`` and an optional ``check`` (run by `validate`)."""
    if not doc or "\n" in doc:
        raise TypeError("setting() needs a one-line doc")
    metadata = {"doc": doc, "check": check}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def doc_of(f: dataclasses.Field) -> str:
    """The field's one-line doc ("" for a field made without `setting`)."""
    return f.metadata.get("doc", "")


def check_of(f: dataclasses.Field) -> Check | None:
    return f.metadata.get("check")


# ---------------------------------------------------------------------------------------------------------
# Validation


def validate(config: Any) -> None:
    """Check every field of the dataclass instance ``config``: its type, then its `Check`.

    Values are normalised in place (1e4 → 10000 for an int field, a path → str); the first bad field
    raises one `UsageError` line naming the field, the value and what is allowed.
    """
    hints = _type_hints(type(config))
    for f in dataclasses.fields(config):
        value = check_type(f.name, getattr(config, f.name), hints[f.name])
        check = check_of(f)
        if value is not None and check is not None and not check.holds(value):
            if check.message is not None:
                raise UsageError(check.message(value))
            raise UsageError(f"{f.name} must be {check.allowed}, got {value!r}")
        object.__setattr__(config, f.name, value)  # also for frozen dataclasses


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_type(name: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field annotation and return it normalised: int, float, bool, str,
    X | None, ``tuple[X, ...]`` / ``tuple[X, Y]`` / ``list[X]`` (from a list or tuple), ``dict[str, X]``,
    a dataclass (an instance of it) and Any (anything)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if isinstance(annotation, types.UnionType) or origin is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return check_type(name, value, inner[0])
        for kind in inner:  # bool | str (compile = true | "auto"): the first type that fits
            try:
                return check_type(name, value, kind)
            except UsageError:
                pass
        kinds = " or ".join(getattr(kind, "__name__", str(kind)) for kind in inner)
        raise UsageError(f"{name} must be {kinds}, got {value!r}")
    if origin is dict:
        item = args[1] if len(args) == 2 else Any
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            what = "a table of name = path" if item is str else "a table"
            raise UsageError(f"{name} must be {what}, got {value!r}")
        return {k: check_type(f"{name}.{k}", v, item) for k, v in value.items()}
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):  # a string is not a list of its characters
            raise UsageError(f"{name} must be a list of {_type_name(annotation)}, got {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):  # tuple[X, Y]: fixed length
            if len(value) != len(args):
                raise UsageError(f"{name} must be a list of {len(args)} values, got {value!r}")
            kinds = args
        else:
            kinds = (args[0] if args else Any,) * len(value)
        items = [
            check_type(f"{name}[{i}]", v, kind) for i, (v, kind) in enumerate(zip(value, kinds, strict=True))
        ]
        return tuple(items) if origin is tuple else items
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 1e4 in YAML/TOML
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, os.PathLike):
            return str(value)
        if isinstance(value, str):
            return value
    raise UsageError(f"{name} must be {_type_name(annotation)}, got {value!r}")


def _type_name(annotation: Any) -> str:
    """``int``; ``float`` for ``tuple[float, ...]`` (what each item must be)."""
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    if typing.get_origin(annotation) in (tuple, list) and len(args) == 1:
        annotation = args[0]
    return getattr(annotation, "__name__", str(annotation))


# ---------------------------------------------------------------------------------------------------------
# Rendering: --help and README tables


def format_default(f: dataclasses.Field) -> str:
    """The field's default as a user writes it in a config file or on the command line."""
    value = f.default_factory() if f.default_factory is not _MISSING else f.default
    if value is _MISSING:
        return "(required)"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "":
        return '""'
    if isinstance(value, (tuple, list)):
        return _as_list(value)
    return str(value)


def _as_list(value: Any) -> str:
    """A tuple or list as a TOML array: ``["linear", "mlp"]``, ``[0.01]``."""
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_as_list(item) for item in value) + "]"
    return f'"{value}"' if isinstance(value, str) else str(value)


def help_text(f: dataclasses.Field) -> str:
    """``--help`` line of a field: its doc (without Markdown backticks) and its default."""
    text = f"{doc_of(f).replace('`', '')} (default: {format_default(f)})"
    return text.replace("%", "%%")  # argparse %-formats help strings


def field_table(cls: type) -> str:
    """A Markdown table of the fields of the dataclass ``cls``: name, default and doc."""
    rows = ["| field | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        default = format_default(f)
        default = default if default == "(required)" else f"`{default}`"
        rows.append(f"| `{f.name}` | {default} | {doc_of(f).replace('|', chr(92) + '|')} |")
    return "\n".join(rows) + "\n"


_TABLE = re.compile(r"(<!-- fields:(?P<cls>[\w.]+) -->\n)(?P<table>.*?)(<!-- /fields -->)", re.DOTALL)


def update_tables(text: str) -> str:
    """``text`` with every table between ``<!-- fields:module.Class -->`` and ``<!-- /fields -->``
    regenerated from that dataclass."""

    def render(match: re.Match) -> str:
        return match.group(1) + field_table(_import_class(match.group("cls"))) + match.group(4)

    return _TABLE.sub(render, text)


def _import_class(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise UsageError(f"fields table names {dotted!r}, which is not an importable class") from None
    if not dataclasses.is_dataclass(cls):
        raise UsageError(f"fields table names {dotted!r}, which is not a dataclass")
    return cls


def main(argv: list[str] | None = None) -> int:
    """``python -m noisylm.configs [--check] FILE...``: regenerate the field tables in FILEs."""
    parser = argparse.ArgumentParser(
        prog="python -m noisylm.configs",
        description="Regenerate the config field tables (<!-- fields:module.Class --> ... <!-- /fields -->) "
        "of Markdown files from the dataclasses' field docs.",
    )
    parser.add_argument("files", nargs="+", type=Path, help="Markdown files, e.g. README.md")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is stale")
    args = parser.parse_args(argv)
    from noisylm.artifacts import atomic_write_text

    stale = []
    try:
        for path in args.files:
            if not path.is_file():
                raise UsageError(f"{path} not found; pass the Markdown file that holds the field tables")
            text = path.read_text(encoding="utf-8")
            if not _TABLE.search(text):
                raise UsageError(f"{path} has no <!-- fields:module.Class --> ... <!-- /fields --> table")
            new = update_tables(text)
            if new != text:
                stale.append(path)
                if not args.check:
                    atomic_write_text(path, new)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    verb = "stale" if args.check else "updated"
    for path in stale:
        print(f"{verb}: {path}")
    return 1 if stale and args.check else 0

"""A command's argparse derived from its config dataclass, and the config built back from the parse.

Each field becomes `--field-name` with the help of its `option()` metadata; `bool` fields become
`--name` (default False) or `--no-name` (default True); `list[str]` takes one or more values (a
repeated flag adds more when the default is empty); a
nested config dataclass (TrainConfig.memory) contributes its own fields, and only those given on
the command line replace the parent's default for it (so `--method memgen` keeps MemGen's policy
unless, say, `--budget` is passed).
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, fields, is_dataclass, replace
from typing import Any


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(the type inside Optional[...], whether None was allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), True
    return tp, False


def _nested(tp: Any) -> type | None:
    inner, _ = _unwrap(tp)
    return inner if isinstance(inner, type) and is_dataclass(inner) else None


def _cli_fields(cls: type):
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in fields(cls) if f.metadata.get("cli", True)]


def add_arguments(parser, cls: type, suppress: bool = False) -> None:
    """Add one argument per command-line field of dataclass cls (suppress: absent unless given)."""
    for f, tp in _cli_fields(cls):
        nested = _nested(tp)
        if nested is not None:
            group = parser.add_argument_group(f"{f.name} options", f.metadata.get("help"))
            add_arguments(group, nested, suppress=True)
        else:
            _add_field(parser, f, tp, suppress)


def _add_field(parser, f: dataclasses.Field, tp: Any, suppress: bool) -> None:
    meta = f.metadata
    inner, _ = _unwrap(tp)
    default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else MISSING)
    flag = meta.get("flag") or "--" + f.name.replace("_", "-")
    kwargs: dict[str, Any] = {"help": meta.get("help", "")}
    if inner is bool:
        if default is True:
            flag, kwargs["help"] = "--no-" + f.name.replace("_", "-"), "turn off: " + kwargs["help"]
        kwargs.update(action="store_false" if default is True else "store_true", dest=f.name)
    elif typing.get_origin(inner) is list:
        kwargs.update(nargs="+", type=typing.get_args(inner)[0], metavar=meta.get("metavar"))
        if default == []:  # repeating the flag adds to the list (a non-empty default is replaced as a whole)
            kwargs["action"] = "extend"
    else:
        kwargs.update(type=inner, choices=meta.get("choices"), metavar=meta.get("metavar"))
        if default not in (MISSING, None):
            kwargs["help"] += f" (default {default})"
    if suppress:
        kwargs["default"] = argparse.SUPPRESS
    elif default is MISSING:
        kwargs["required"] = not meta.get("positional")
    else:
        kwargs["default"] = default
    if meta.get("positional"):
        kwargs.pop("required", None)
        kwargs.pop("dest", None)
        parser.add_argument(f.name, **kwargs)
    else:
        parser.add_argument(flag, **kwargs)


def from_args(cls: type, args: argparse.Namespace):
    """The config of class cls from parsed arguments (validated by its __post_init__)."""
    values, given_nested = {}, {}
    for f, tp in _cli_fields(cls):
        nested = _nested(tp)
        if nested is not None:
            given_nested[f.name] = {g.name: getattr(args, g.name) for g, _ in _cli_fields(nested) if hasattr(args, g.name)}
        elif hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    # A config whose checks look into a nested one (TrainConfig: --recon-weight needs the memory's window) says
    # what that nested default is, so the nested config is whole before the parent's checks run.
    defaults = cls.nested_defaults(values) if hasattr(cls, "nested_defaults") else {}
    for name, given in given_nested.items():
        if given and name in defaults:
            values[name] = replace(defaults[name], **given)
    config = cls(**values)
    for name, given in given_nested.items():
        if given and name not in defaults:  # only what was given replaces the parent's default for the nested config
            config = replace(config, **{name: replace(getattr(config, name), **given)})
    return config

"""The field helpers shared by every dataclass config (the joint config and the stage configs): the field with
help text, and the coercion of YAML or command-line values to a field's type."""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import field
from typing import Any

__all__ = ["config_field", "is_section", "field_types", "coerce"]


def config_field(default: Any, help: str, **kw) -> Any:
    """A dataclass field with help text (``metadata['help']``); a list or dict default is copied per instance.

    >>> from dataclasses import dataclass, fields
    >>> @dataclass
    ... class C:
    ...     tags: list = config_field(["a"], "some tags")
    >>> C().tags is not C().tags, fields(C)[0].metadata["help"]
    (True, 'some tags')
    """
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def is_section(tp) -> bool:
    """True for a nested config dataclass (a section such as ``optim``), False for a value field."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def field_types(cls) -> dict[str, Any]:
    """Field name -> resolved type of a config dataclass."""
    return typing.get_type_hints(cls)


def coerce(value: Any, tp, key: str) -> Any:
    """Convert a YAML value or a command-line string to the field type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return coerce(value, args[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"config key '{key}' expects true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"config key '{key}' expects {tp.__name__}, got {value!r}")
        try:
            v = float(value) if tp is float else int(str(value), 0) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise ValueError(f"config key '{key}' expects {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != int(value):
            raise ValueError(f"config key '{key}' expects an integer, got {value!r}")
        return v
    if tp is str:
        return str(value)
    if tp is list or origin is list:  # YAML list, or comma-separated on the command line
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key '{key}' expects a list (or comma-separated names), got {value!r}")
        return list(value)
    if tp is dict or origin is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"config key '{key}' expects a mapping (JSON on the command line), "
                                 f"got {value!r}") from None
        if not isinstance(value, dict):
            raise ValueError(f"config key '{key}' expects a mapping, got {value!r}")
        return dict(value)
    return value

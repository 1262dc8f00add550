"""The config-field helper shared by every dataclass config (the joint config and the stage configs)."""
from __future__ import annotations

from dataclasses import field
from typing import Any

__all__ = ["config_field"]


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

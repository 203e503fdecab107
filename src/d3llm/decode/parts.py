"""What the parts of a decode config share (strategies.py, policies.py, config.EarlyStop): a
frozen settings object whose dataclass fields are its settings, registries by name, and the
value checks every part uses, so a range is written once. No torch."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TypeVar

from d3llm.errors import DecodeSettingError

MAX_TOKENS = 1 << 20  # a count of tokens above this is a typo (a 10**20 would overflow torch or hang)
P = TypeVar("P", bound=type)


@dataclass(frozen=True)
class Part:
    """A settings object: its dataclass fields are its settings, named flat by users."""

    def settings(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Registry(dict):
    """Part classes by their `name`; `register` is the class decorator that adds one."""

    def register(self, cls: P) -> P:
        self[cls.name] = cls
        return cls


def positive_int(name: str, value, allow_none: bool = False) -> None:
    """The one check of a count setting: a positive int (not a bool) of at most MAX_TOKENS."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_TOKENS:
        raise DecodeSettingError(f"`{name}` must be a positive integer, got {value!r} (at most {MAX_TOKENS})", name)


def one_of(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise DecodeSettingError(f"`{name}` must be one of {', '.join(map(str, allowed))}, got {value!r}", name)


def boolean(name: str, value, allow_none: bool = False) -> None:
    if not isinstance(value, bool) and not (allow_none and value is None):
        choices = "true, false or none" if allow_none else "true or false"
        raise DecodeSettingError(f"`{name}` must be {choices}, got {value!r}", name)

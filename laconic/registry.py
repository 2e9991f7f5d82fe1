"""The one registry implementation: named variants in a plain dict, duplicates rejected, unknown names answered
with the registered choices and the closest one.

Rewards (terms, transforms, verifiers) and trainers (advantage estimators, losses, KL estimators, aggregations)
register their variants here; a config field's ``kind`` picks one by name."""
from __future__ import annotations

import difflib
from typing import Callable, Iterable, TypeVar

F = TypeVar("F", bound=Callable)


def suggest(name: object, choices: Iterable) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` to ``name`` (string similarity), or ``""``."""
    options = [str(c) for c in choices]
    close = difflib.get_close_matches(str(name), options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def one_of(field: str, value, allowed: Iterable) -> None:
    """Raise ``ValueError`` naming ``field`` unless ``value`` is in ``allowed`` (with the closest choice)."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not one of {sorted(allowed, key=str)}{suggest(value, allowed)}")


class Registry(dict):
    """``name -> fn`` for one kind of variant (e.g. "advantage estimator")."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator adding ``fn`` under ``name``; a second registration of the name is an error."""

        def deco(fn: F) -> F:
            self.add(name, fn)
            return fn

        return deco

    def add(self, name: str, fn: Callable) -> None:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered by {self[name].__module__}")
        self[name] = fn

    def get_or_raise(self, name: str, field: str) -> Callable:
        """The variant ``name``; a KeyError naming ``field``, the registered names and the closest one otherwise."""
        if name not in self:
            raise KeyError(f"{field}={name!r} is not a registered {self.kind}; choose from {sorted(self)}"
                           f"{suggest(name, self)}")
        return self[name]

"""A plain dict registry that rejects duplicate names (one per algorithm kind)."""
from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(dict):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self[name].__module__}")
            self[name] = fn
            return fn

        return deco

    def get_or_raise(self, name: str, field: str) -> Callable:
        if name not in self:
            raise KeyError(f"{field}={name!r} is not a registered {self.kind}; choose from {sorted(self)}")
        return self[name]

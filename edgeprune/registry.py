"""A tiny name -> object registry used for backends, importance criteria, strategies.

Lookups of unknown names fail with the list of valid ones, so the CLI's error message and
its ``click.Choice`` options come from the same place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from edgeprune.errors import EdgepruneError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, error: type[EdgepruneError] = EdgepruneError) -> None:
        self.kind = kind
        self._error = error
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise self._error(
                f"unknown {self.kind} '{name}'. Choose from: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

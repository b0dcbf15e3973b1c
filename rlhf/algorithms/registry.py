"""Name -> callable registries, one per pluggable axis of the algorithm.

The controller looks implementations up by the name in its config
(`ADV_ESTIMATORS.get(cfg.adv_estimator)`) instead of branching on strings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class Registry:
    """A named table of callables of one kind (e.g. "advantage estimator").

    >>> LOSSES = Registry("policy loss")
    >>> @LOSSES.register("vanilla")
    ... def vanilla(x):
    ...     return x
    >>> LOSSES.get("vanilla")(1), "vanilla" in LOSSES, LOSSES.names()
    (1, True, ['vanilla'])
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable] = {}
        self._traits: dict[str, object] = {}

    def register(self, name: str, traits: object = None) -> Callable[[F], F]:
        """Decorator adding `fn` under `name`; a second entry with the same name is an error.

        `traits`: what the entry declares about itself (e.g. the inputs an advantage
        estimator reads), returned by `traits(name)` for config validation.
        """

        def decorator(fn: F) -> F:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = fn
            self._traits[name] = traits
            return fn

        return decorator

    def traits(self, name: str) -> object:
        """The `traits` registered with `name` (None if it declared none)."""
        self.get(name)  # unknown names raise the usual KeyError
        return self._traits[name]

    def get(self, name: str) -> Callable:
        try:
            return self._entries[name]
        except KeyError:
            available = ", ".join(self.names()) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; available: {available}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"

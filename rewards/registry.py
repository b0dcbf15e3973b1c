"""Registry of reward functions that run in-process, looked up by name.

A spec whose `fn` has no ":" names an entry here (`RewardSpec(fn="gsm8k")`). The
built-ins (`rewards.builtins`) and the remote client (`rewards.remote`) register
themselves on first lookup, so importing this module stays cheap.

    @register_reward("my_len")
    def my_len(response: str, label, **kwargs) -> float: ...

Duplicate names are rejected. Registered functions are trusted: they run in the
controller process without a timeout (user files run in worker processes instead).
"""
from __future__ import annotations

from typing import Callable

_REGISTRY: dict[str, Callable] = {}
_BUILTINS_LOADED = False


def batched(fn: Callable) -> Callable:
    """Mark `fn` as a batch function: called once as fn(responses, labels, **columns).

    Same effect as setting `fn.batched = True` (which needs no import of `rewards`).
    """
    fn.batched = True
    return fn


def register_reward(name: str, *, batch: bool = False) -> Callable[[Callable], Callable]:
    """Decorator adding `fn` to the registry under `name` (rejects duplicates)."""

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"reward function {name!r} is already registered ({_REGISTRY[name]!r})")
        if batch:
            batched(fn)
        _REGISTRY[name] = fn
        return fn

    return deco


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from rewards import builtins, remote  # noqa: F401  (registration side effect)


def get_reward(name: str) -> Callable:
    """The registered function `name`; KeyError listing the known names otherwise."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no reward function named {name!r}; registered: {', '.join(list_rewards())}") from None


def list_rewards() -> list[str]:
    """Sorted names of all registered reward functions."""
    _load_builtins()
    return sorted(_REGISTRY)

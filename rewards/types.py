"""The objects that cross the boundary between the controller and `rewards`.

`RewardSpec` says which function scores and how much it weighs; `RewardResult` is
what one `RewardManager.score` call returns. Both are plain dataclasses so a config
loader can build specs from YAML without importing anything heavy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RewardSpec:
    """One reward term. The total reward of a sample is sum(weight * fn(sample))."""

    name: str  # logged as reward/<name>; key of RewardResult.components
    fn: str  # built-in registry name, "path/to/file.py:fn", or "package.module:fn"
    weight: float = 1.0  # multiplier of this term in RewardResult.scores
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword args for fn
    batched: bool | None = None  # force the batch convention (None: detect, see loader.detect_style)


@dataclass
class RewardResult:
    """Scores of one batch of B samples."""

    scores: list[float]  # weighted sum over specs, len B
    components: dict[str, list[float]]  # spec name -> unweighted scores, len B each
    extra: dict[str, list[float]]  # "<name>/<key>" -> extra numeric outputs, len B each
    errors: int  # samples where at least one spec fell back to error_score


class RewardError(RuntimeError):
    """A reward function failed (exception, timeout, bad return) or could not be loaded."""

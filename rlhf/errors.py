"""Errors that end a run with a message instead of a traceback (the CLI exits 1).

Each says what failed and where: the role and rank, the resource, the bad numbers.
Configuration and input errors are ValueErrors instead (the CLI exits 2).
"""
from __future__ import annotations


class RunError(RuntimeError):
    """The run cannot go on; the message names the failing part."""


class NumericsError(RunError):
    """Too many steps with NaN/Inf in the batch, the losses or the gradients."""

"""The reward of the end-to-end benchmark, loaded by both sides (our pipeline as a
reward file, TRL as a plain function): the task verifier plus a small bonus for
digits, so a random-init model's samples differ in reward and GRPO advantages are
not all zero (both trainers then really move the weights).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rewards.builtins import tiny_arithmetic  # noqa: E402


def arithmetic_with_digit_bonus(response: str, label) -> float:
    """tiny_arithmetic + 0.1 x the fraction of digit characters.

    >>> arithmetic_with_digit_bonus("82", "82"), arithmetic_with_digit_bonus("a1b2", "9")
    (1.1, 0.05)
    """
    digits = sum(c.isdigit() for c in response) / max(1, len(response))
    return tiny_arithmetic(response, label) + 0.1 * digits

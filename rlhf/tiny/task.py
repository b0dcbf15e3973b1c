"""The tiny model's synthetic, verifiable task: integer addition.

A prompt is "37+45=" and the answer is "82". Operands have 1-2 digits (at most
10,000 distinct problems): a ~1M-parameter model learns it on a CPU in tens of
seconds, so a warm start stopped early leaves RL a measurable gain to make.
The verifier is `rewards.builtins.tiny_arithmetic`.
"""
from __future__ import annotations

import json
import random
from pathlib import Path


def all_problems(max_digits: int = 2) -> list[dict]:
    """Every a+b with operands below 10**max_digits, in a fixed order."""
    top = 10 ** max_digits
    return [{"prompt": f"{a}+{b}=", "label": str(a + b)} for a in range(top) for b in range(top)]


def make_splits(n_train: int, n_eval: int, seed: int, max_digits: int = 2) -> tuple[list[dict], list[dict]]:
    """Disjoint train and held-out splits, drawn uniformly without replacement."""
    problems = all_problems(max_digits)
    if n_train + n_eval > len(problems):
        raise ValueError(f"only {len(problems)} distinct problems with {max_digits}-digit operands")
    random.Random(seed).shuffle(problems)
    return problems[n_eval: n_eval + n_train], problems[:n_eval]


def write_jsonl(rows: list[dict], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)

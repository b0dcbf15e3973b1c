"""The tiny model's synthetic, verifiable task: two-digit addition with a carry.

A prompt is "37+45=" and the answer is "82". Every problem has two-digit operands whose
units digits carry (3,645 distinct problems, one fixed format of 6 characters), so a
~1M-parameter model learns the arithmetic on a CPU in about a minute.

Why the warm start is taught by a *noisy teacher*: RL sharpens what sampling already
finds. The teacher writes the right sum with probability `teacher_p_correct` and
otherwise the sum with the carry forgotten ("37+45=" -> "72"). The warm-started policy
copies that mixture: greedy decoding gives the more likely, carry-less answer (low
pass@1), while a few samples at temperature 1 contain the right one (high pass@8).
The reward (`rewards.builtins.tiny_arithmetic`) then has something to select, and RL
visibly moves greedy accuracy from below 20% to most answers right within minutes.
"""
from __future__ import annotations

import json
import random
from pathlib import Path


def carry_problems() -> list[dict]:
    """Every a+b with 10 <= a, b <= 99 whose units digits carry, in a fixed order."""
    return [{"prompt": f"{a}+{b}=", "label": str(a + b)}
            for a in range(10, 100) for b in range(10, 100) if a % 10 + b % 10 >= 10]


def forgot_carry(prompt: str) -> str:
    """The teacher's slip: digit-wise sums mod 10, no carries ("37+45=" -> "72")."""
    a, b = (int(x) for x in prompt.rstrip("=").split("+"))
    out, place = 0, 1
    while a or b:
        out += (a % 10 + b % 10) % 10 * place
        a, b, place = a // 10, b // 10, place * 10
    return str(out)


def make_splits(n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Disjoint train and held-out splits, drawn uniformly without replacement."""
    problems = carry_problems()
    if n_train + n_eval > len(problems):
        raise ValueError(f"only {len(problems)} distinct problems; asked for {n_train} + {n_eval}")
    random.Random(seed).shuffle(problems)
    return problems[n_eval: n_eval + n_train], problems[:n_eval]


def write_jsonl(rows: list[dict], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)

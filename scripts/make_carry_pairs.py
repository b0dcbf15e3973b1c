"""Write data/arith-pairs/carry_pairs.jsonl.gz: preference pairs of the tiny kit's task.

Every two-digit addition with a carry (rlhf.tiny.task.carry_problems, 3,645 problems),
in a fixed shuffled order: chosen = the right sum, rejected = the sum with the carry
forgotten (the tiny policy's own favourite mistake). `recipes/dpo_tiny.yaml` trains on
the first rows and holds out the last `data.eval_size`. Deterministic: rerunning it
rewrites the same bytes.

    python scripts/make_carry_pairs.py
"""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from rlhf.tiny.task import carry_problems, forgot_carry

OUT = Path(__file__).resolve().parents[1] / "data" / "arith-pairs" / "carry_pairs.jsonl.gz"
SEED = 22


def main() -> None:
    problems = carry_problems()
    random.Random(SEED).shuffle(problems)
    rows = [{"prompt": p["prompt"], "chosen": p["label"], "rejected": forgot_carry(p["prompt"])} for p in problems]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    OUT.write_bytes(gzip.compress(text, mtime=0))
    print(f"{OUT}: {len(rows)} pairs")


if __name__ == "__main__":
    main()

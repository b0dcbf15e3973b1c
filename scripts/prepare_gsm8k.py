"""Prepare GSM8K for the PPO/GRPO recipes: prompt/label JSONL, train and held-out test.

Reads the GSM8K train split shipped with the project (data/gsm8k/raw/train.jsonl.gz,
7473 problems, MIT; provenance in data/README.md) and writes `<out>/train.jsonl` and
`<out>/test.jsonl` (the last --test-size problems, held out). Each row: `prompt`
(question + answer-format instruction), `label` (the number after '####'),
`data_source` ("gsm8k"). No download.

    python scripts/prepare_gsm8k.py                 # -> data/gsm8k/{train,test}.jsonl
    python scripts/prepare_gsm8k.py --src other.jsonl --out /tmp/gsm8k --test-size 100
"""
import argparse
import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTION = "Let's think step by step and output the final answer after \"####\"."


def to_row(problem: dict, index: int) -> dict:
    if "####" not in problem.get("answer", ""):
        raise ValueError(f"row {index}: answer has no '####' final answer")
    label = problem["answer"].split("####")[-1].strip().replace(",", "")
    return {"prompt": f"{problem['question']} {INSTRUCTION}", "label": label, "data_source": "gsm8k"}


def read_problems(src: Path) -> list[dict]:
    """GSM8K rows of a .jsonl or .jsonl.gz file."""
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT / "data" / "gsm8k" / "raw" / "train.jsonl.gz",
                        help="GSM8K JSONL (.gz) with question/answer columns")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "gsm8k")
    parser.add_argument("--test-size", type=int, default=500)
    args = parser.parse_args()
    if not args.src.is_file():
        print(f"prepare_gsm8k: error: --src {args.src}: file not found", file=sys.stderr)
        return 2
    try:
        rows = [to_row(problem, i) for i, problem in enumerate(read_problems(args.src))]
    except (ValueError, OSError) as err:  # json.JSONDecodeError is a ValueError
        print(f"prepare_gsm8k: error: {args.src}: {err}", file=sys.stderr)
        return 2
    if not 0 < args.test_size < len(rows):
        print(f"prepare_gsm8k: error: --test-size {args.test_size} must be in (0, {len(rows)})", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    splits = {"train": rows[: -args.test_size], "test": rows[-args.test_size:]}
    for name, part in splits.items():
        (args.out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        print(f"{args.out / name}.jsonl: {len(part)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())

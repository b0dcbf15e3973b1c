"""Prepare GSM8K for the PPO/GRPO recipes: prompt/label JSONL, train and held-out test.

Reads the GSM8K train split shipped in ../shared/data/gsm8k (7473 problems) and
writes `<out>/train.jsonl` and `<out>/test.jsonl` (the last --test-size problems,
held out). Each row: `prompt` (question + answer-format instruction), `label`
(the number after '####'), `data_source` ("gsm8k"). No download.

    python scripts/prepare_gsm8k.py --src ../shared/data/gsm8k/train.jsonl --out data/gsm8k
"""
import argparse
import json
from pathlib import Path

INSTRUCTION = "Let's think step by step and output the final answer after \"####\"."


def to_row(problem: dict, index: int) -> dict:
    if "####" not in problem.get("answer", ""):
        raise ValueError(f"row {index}: answer has no '####' final answer")
    label = problem["answer"].split("####")[-1].strip().replace(",", "")
    return {"prompt": f"{problem['question']} {INSTRUCTION}", "label": label, "data_source": "gsm8k"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_src = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"
    parser.add_argument("--src", default=str(default_src))
    parser.add_argument("--out", default="data/gsm8k")
    parser.add_argument("--test-size", type=int, default=500)
    args = parser.parse_args()
    rows = [to_row(json.loads(line), i) for i, line in enumerate(open(args.src)) if line.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {"train": rows[: -args.test_size], "test": rows[-args.test_size:]}
    for name, part in splits.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        print(f"{out / name}.jsonl: {len(part)} rows")


if __name__ == "__main__":
    main()

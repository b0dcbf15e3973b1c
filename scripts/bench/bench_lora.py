"""LoRA vs full fine-tuning in the real GRPO pipeline, side by side in one run.

Each side is the real command, `python -m rlhf.cli train recipes/grpo_tiny.yaml
<overrides>`, in a fresh process (its own local Ray):

- full:        full fine-tuning, a reference role, full weights synced (the default)
- lora:        actor.lora (rank --rank), no reference role, only the adapter synced
- lora_merged: actor.lora with sync.lora_merge=true (merged full weights synced)

Reported per side (from the run's metrics.jsonl and memory.json): sync bytes and the
median sync seconds per step, the median step seconds after the first, the peak
resident memory of the pipeline's process tree, the roles started, and the final
reward. Memory and time are measurements, not checks.

    .venv/bin/python scripts/bench/bench_lora.py [--model tiny:policy | bench] [--steps 4]
        [--rank 8] [--sides full,lora,lora_merged] [--out-dir scripts/bench/results]

~1 minute per side on 2 cores with the tiny model.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parents[2]
SIDES = {
    "full": [],
    "lora": ["actor.lora.rank={rank}", "actor.lora.alpha={alpha}"],
    "lora_merged": ["actor.lora.rank={rank}", "actor.lora.alpha={alpha}", "sync.lora_merge=true"],
}


PHASES = ("generate", "logprobs_values", "update")  # median seconds of these phases too


def run_side(side: str, args, out: Path) -> dict:
    from rlhf.metrics import read_metrics

    model = common.bench_model_path() if args.model == "bench" else args.model
    overrides = [o.format(rank=args.rank, alpha=2 * args.rank) for o in SIDES[side]] + [
        f"model.policy={model}", f"run.total_steps={args.steps}", f"run.run_dir={out / side}",
        "run.export_hf=false", "run.plots=false", "run.save_every=0", "data.eval_path=null",
        "run.log_samples_every=0", f"actor.lr={args.lr}"]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", "train", str(ROOT / "recipes" / "grpo_tiny.yaml"),
                           *overrides], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{side} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    steps = [r for r in read_metrics(out / side) if r["step"] > 0]
    memory = json.loads((out / side / "memory.json").read_text())
    roles = sorted(json.loads((out / side / "placement.json").read_text()))
    return {"sync_bytes": steps[-1]["sync/bytes"],
            "sync_seconds": statistics.median(r["sync/seconds"] for r in steps),
            "step_seconds": statistics.median(r["timing/step"] for r in steps[1:] or steps),
            **{f"{phase}_seconds": statistics.median(r[f"timing/{phase}"] for r in steps[1:] or steps)
               for phase in PHASES},
            "peak_rss_gib": memory["peak_rss_gib"],
            "logprob_diff_mean": max(r["rollout/logprob_diff_mean"] for r in steps),
            "reward_last": steps[-1]["rollout/reward_mean"],
            "roles": roles, "wall_seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny:policy", help='"tiny:policy", "bench" (24M) or an HF folder')
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        for side in args.sides.split(","):
            results[side] = run_side(side, args, Path(tmp))
            print(f"{side}: done in {results[side]['wall_seconds']:.0f}s", flush=True)
    headers = ["side", "sync bytes", "sync s", "step s", *(f"{p} s" for p in PHASES), "peak RSS GiB",
               "max logprob diff", "roles"]
    rows = [[side, r["sync_bytes"], r["sync_seconds"], r["step_seconds"], *(r[f"{p}_seconds"] for p in PHASES),
             r["peak_rss_gib"], r["logprob_diff_mean"], ",".join(r["roles"])] for side, r in results.items()]
    print(common.format_table(headers, rows))
    result = {"model": args.model, "steps": args.steps, "rank": args.rank,
              "sides": results}
    common.save_result("lora", result, args.out_dir)


if __name__ == "__main__":
    main()

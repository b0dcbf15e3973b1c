"""The agent demo's learning over seeds: recipes/agent_tiny.yaml (GRPO with a calculator
tool on 3-digit x 2-digit products), held-out greedy exact answers and the tool-call
format error rate before and after RL, per seed and as mean +- spread.

    .venv/bin/python scripts/bench/bench_agent_learning.py [--seeds 1 2 3] [--steps 20]
    .venv/bin/python scripts/bench/bench_agent_learning.py --summarise RUN_DIR [RUN_DIR ...]

~5 minutes per seed on 2 cores (AMD EPYC, AVX2).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import ROOT, format_table, machine_info, ray_like_pipeline, save_result

KEYS = {"exact": "eval/pass_rate", "format_errors": "eval/agent/format_error_rate",
        "tool_calls": "eval/agent/tool_calls_mean"}


def summarise(run_dir: Path) -> dict:
    from rlhf.metrics import read_metrics

    records = [r for r in read_metrics(run_dir) if r.get("eval/pass_rate") is not None]
    first, last = records[0], records[-1]
    train = [r for r in read_metrics(run_dir) if r["step"] > 0 and r.get("agent/format_error_rate") is not None]
    return {"run_dir": str(run_dir), "steps": last["step"],
            **{f"{name}_before": first[key] for name, key in KEYS.items()},
            **{f"{name}_after": last[key] for name, key in KEYS.items()},
            "train_format_errors_first3": statistics.mean(r["agent/format_error_rate"] for r in train[:3]),
            "train_format_errors_last3": statistics.mean(r["agent/format_error_rate"] for r in train[-3:])}


def run_seed(seed: int, steps: int, out: Path) -> Path:
    from rlhf.config import load_config
    from rlhf.controller import PPOTrainer
    from rlhf.stage_run import run_to_end

    cfg = load_config(ROOT / "recipes" / "agent_tiny.yaml", [
        f"run.seed={seed}", f"run.total_steps={steps}", "run.save_every=0", "run.export_hf=false",
        "run.plots=false", f"run.output_dir={out}", f"run.name=seed{seed}"])
    return run_to_end(PPOTrainer(cfg)).run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--summarise", type=Path, nargs="+", help="summarise finished runs instead of running")
    args = ap.parse_args()
    if args.summarise:
        runs = [summarise(d) for d in args.summarise]
    else:
        ray_like_pipeline()
        with tempfile.TemporaryDirectory() as tmp:
            runs = [summarise(run_seed(s, args.steps, Path(tmp))) for s in args.seeds]
    rows = [[Path(r["run_dir"]).name, r["exact_before"], r["exact_after"], r["format_errors_before"],
             r["format_errors_after"], r["train_format_errors_first3"], r["train_format_errors_last3"]] for r in runs]
    print(format_table(["run", "exact before", "exact after", "format err before", "format err after",
                        "train format err (first 3 steps)", "(last 3)"], rows))
    spread = lambda key: (statistics.mean(r[key] for r in runs), min(r[key] for r in runs), max(r[key] for r in runs))  # noqa: E731
    summary = {key: spread(key) for key in ("exact_before", "exact_after", "format_errors_before",
                                            "format_errors_after")}
    for key, (mean, low, high) in summary.items():
        print(f"{key}: mean {mean:.3f} (min {low:.3f}, max {high:.3f})")
    print(f"[bench] {machine_info()['cpu']}")
    save_result("agent_learning", {"runs": runs, "summary": summary})


if __name__ == "__main__":
    main()

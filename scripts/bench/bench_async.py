"""rollout.mode one_step vs sync where someone waits: agentic trajectories whose tool
takes a fixed latency (scripts/bench/sleepy_tool_env.py), GRPO on the tiny policy.

Per step, sync runs generate (+ the tool's wait) -> train -> sync one after the other;
one_step generates the next step's batch, tools included, while this step trains. On 2
CPU cores generation and training compete for the cores, so what one_step can hide is
the waiting: reported is the steady-state step time of each mode (median over the steps
after the first two, before the last), the tool wait per step, and the share of it one_step hid:
(sync - one_step) / tool wait. Both runs in one process, one after the other, same seeds.

    .venv/bin/python scripts/bench/bench_async.py [--steps 8] [--latency 1.0]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import ROOT, format_table, machine_info, ray_like_pipeline, save_result


def run_mode(mode: str, steps: int, latency: float, out: Path) -> list[dict]:
    from rlhf.config import load_config
    from rlhf.controller import PPOTrainer
    from rlhf.metrics import read_metrics
    from rlhf.stage_run import run_to_end

    env = ROOT / "scripts" / "bench" / "sleepy_tool_env.py"
    cfg = load_config(ROOT / "recipes" / "grpo_tiny.yaml", [
        f"run.total_steps={steps}", "run.save_every=0", "run.eval_every=0", "data.eval_path=null",
        "run.export_hf=false", "run.plots=false", f"run.output_dir={out}", f"run.name={mode}",
        f"rollout.mode={mode}", "algorithm.tis_cap=2.0", f"rollout.agent.environment={env}:SleepyTool",
        f"rollout.agent.env_kwargs={{latency_s: {latency}}}", "rollout.agent.max_turns=2",
        "rollout.agent.max_total_tokens=24", "rollout.agent.stop=[]", "rollout.agent.tool_timeout_s=60",
        "reward.functions=[]"])
    return [r for r in read_metrics(run_to_end(PPOTrainer(cfg)).run_dir) if r["step"] > 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--latency", type=float, default=1.0, help="seconds the tool takes per call")
    args = ap.parse_args()
    machine = machine_info()
    print(f"[bench] {machine['cpu']}, {machine['cores']} cores, avx512_bf16={machine['avx512_bf16']}", flush=True)
    ray_like_pipeline()
    # steady state: after the first two steps, before the last (one_step has nothing ahead there)
    steady = lambda records, key: statistics.median(r.get(key, 0.0) for r in records[2:-1])  # noqa: E731
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("sync", "one_step"):
            records = run_mode(mode, args.steps, args.latency, Path(tmp))
            results[mode] = {"step_s": steady(records, "timing/step"),
                             "wait_rollout_s": steady(records, "timing/wait_rollout"),
                             "reward_mean": statistics.mean(r["rollout/reward_mean"] for r in records)}
    hidden = (results["sync"]["step_s"] - results["one_step"]["step_s"]) / args.latency
    rows = [[mode, r["step_s"], r["wait_rollout_s"], r["reward_mean"]] for mode, r in results.items()]
    print(format_table(["mode", "s/step (median, steps 3+)", "trainer waits s/step", "reward mean"], rows))
    print(f"tool latency per step: {args.latency:.2f} s; hidden by one_step: {hidden:.0%}; "
          f"speed-up {results['sync']['step_s'] / results['one_step']['step_s']:.2f}x")
    save_result("async", {"latency_s": args.latency, "steps": args.steps, "modes": results,
                          "tool_latency_hidden": hidden})


if __name__ == "__main__":
    main()

"""rollout.mode sync vs one_step vs async where someone waits, and partial rollouts
(finish vs resume) on a long tail. GRPO on the tiny policy, agentic trajectories whose
tool sleeps (scripts/bench/sleepy_tool_env.py).

1. Fixed tool latency: sync runs generate (+ the tool's wait) -> train -> sync one after
   the other; one_step generates the next step's batch, tools included, while this step
   trains; async (max_staleness 2) keeps two batches ahead, with rollout.partial finish
   (the sync waits for what the engine runs) or resume (it pauses the engine). On 2 CPU cores generation and
   training compete for the cores, so what the overlap can hide is the waiting: reported
   is the steady-state step time of each mode (median over the steps after the first two,
   before the last two), and the share of the tool wait hidden: (sync - mode) / latency.
2. Long tail (`--tail`): most tools answer in 0.2 s, one trajectory in `--tail-every`
   (16; 128 trajectories per step) waits the tail.
   async with rollout.partial finish: the weight sync waits for the batch in flight (its
   slowest trajectory); resume: the sync pauses the engine between steps and the slow
   trajectories go on under the new weights. Reported: the trainer's idle time per step,
   timing/wait_rollout (waiting for its batch) + timing/sync (the sync, incl. waiting
   for the engine).

All runs in one process, one after the other, same seeds.

    .venv/bin/python scripts/bench/bench_async.py [--steps 8] [--latency 2.0] [--tail 6.0]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import ROOT, format_table, machine_info, ray_like_pipeline, save_result


def run_mode(name: str, overrides: list[str], steps: int, env_kwargs: str, out: Path) -> list[dict]:
    from rlhf.config import load_config
    from rlhf.controller import PPOTrainer
    from rlhf.metrics import read_metrics
    from rlhf.stage_run import run_to_end

    env = ROOT / "scripts" / "bench" / "sleepy_tool_env.py"
    cfg = load_config(ROOT / "recipes" / "grpo_tiny.yaml", [
        f"run.total_steps={steps}", "run.save_every=0", "run.eval_every=0", "data.eval_path=null",
        "run.export_hf=false", "run.plots=false", f"run.output_dir={out}", f"run.name={name}",
        "algorithm.tis_cap=2.0", f"rollout.agent.environment={env}:SleepyTool",
        f"rollout.agent.env_kwargs={env_kwargs}", "rollout.agent.max_turns=2",
        "rollout.agent.max_total_tokens=24", "rollout.agent.stop=[]", "rollout.agent.tool_timeout_s=60",
        "reward.functions=[]", *overrides])
    print(f"[bench] {name}: {' '.join(overrides)}", flush=True)
    return [r for r in read_metrics(run_to_end(PPOTrainer(cfg)).run_dir) if r["step"] > 0]


def steady(records: list[dict], key: str) -> float:
    """Median over the steady steps: after the first two, before the last two (nothing ahead there)."""
    return statistics.median(r.get(key, 0.0) for r in records[2:-2])


def summary(records: list[dict]) -> dict:
    return {"step_s": steady(records, "timing/step"), "wait_rollout_s": steady(records, "timing/wait_rollout"),
            "sync_s": steady(records, "timing/sync"),
            "idle_s": steady([{**r, "idle": r.get("timing/wait_rollout", 0.0) + r.get("timing/sync", 0.0)}
                              for r in records], "idle"),
            # a long tail shows in the mean, not the median: the steps whose sync met the slow batch
            "idle_mean_s": statistics.mean(r.get("timing/wait_rollout", 0.0) + r.get("timing/sync", 0.0)
                                           for r in records[2:-2]),
            "step_mean_s": statistics.mean(r["timing/step"] for r in records[2:-2]),
            "staleness_mean": statistics.mean(r.get("async/staleness_mean", 0.0) for r in records),
            "resumed_frac": statistics.mean(r.get("async/resumed_frac", 0.0) for r in records),
            "reward_mean": statistics.mean(r["rollout/reward_mean"] for r in records)}


ASYNC = ["rollout.mode=async", "rollout.max_staleness=2"]
MODES = {"sync": ["rollout.mode=sync"], "one_step": ["rollout.mode=one_step"],
         "async finish": [*ASYNC, "rollout.partial=finish"], "async resume": [*ASYNC, "rollout.partial=resume"]}
PARTIAL = {"async finish": [*ASYNC, "rollout.partial=finish"], "async resume": [*ASYNC, "rollout.partial=resume"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--latency", type=float, default=2.0, help="seconds the tool takes per call (part 1)")
    ap.add_argument("--tail", type=float, default=6.0, help="seconds of the slow tools of part 2 (0: skip it)")
    ap.add_argument("--tail-every", type=int, default=16, help="part 2: one trajectory in this many waits the tail")
    ap.add_argument("--only", choices=("latency", "tail"), help="run one part only")
    ap.add_argument("--name", default="async", help="results/<name>.json")
    ap.add_argument("--modes", default=",".join(MODES), help="part 1's modes, comma-separated (sync always runs)")
    args = ap.parse_args()
    machine = machine_info()
    print(f"[bench] {machine['cpu']}, {machine['cores']} cores, avx512_bf16={machine['avx512_bf16']}", flush=True)
    ray_like_pipeline()
    result = {"steps": args.steps, "latency_s": args.latency, "tail_s": args.tail, "tail_every": args.tail_every}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only != "tail":
            modes = {name: summary(run_mode(name.replace(" ", "_"), o, args.steps,
                                            f"{{latency_s: {args.latency}}}", Path(tmp)))
                     for name, o in MODES.items() if name == "sync" or name in args.modes.split(",")}
            for r in modes.values():
                r["latency_hidden"] = (modes["sync"]["step_s"] - r["step_s"]) / args.latency
            print(format_table(["mode", "s/step", "trainer waits s/step", "latency hidden", "staleness", "reward"],
                               [[m, r["step_s"], r["wait_rollout_s"], f"{r['latency_hidden']:.0%}",
                                 r["staleness_mean"], r["reward_mean"]] for m, r in modes.items()]))
            result["modes"] = modes
        if args.tail and args.only != "latency":
            kwargs = f"{{latency_s: 0.2, tail_s: {args.tail}, tail_every: {args.tail_every}}}"
            tail = {name: summary(run_mode(name.replace(" ", "_"), o, args.steps, kwargs, Path(tmp)))
                    for name, o in PARTIAL.items()}
            print(format_table(["long tail", "s/step median", "s/step mean", "trainer idle median (wait + sync)",
                                "trainer idle mean", "resumed samples", "staleness"],
                               [[m, r["step_s"], r["step_mean_s"], r["idle_s"], r["idle_mean_s"],
                                 f"{r['resumed_frac']:.0%}", r["staleness_mean"]] for m, r in tail.items()]))
            result["long_tail"] = tail
    save_result(args.name, result)


if __name__ == "__main__":
    main()

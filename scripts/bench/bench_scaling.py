"""Scaling: our pipeline's GRPO step time as the batch and the response length double.

One pipeline (recipes/grpo_tiny.yaml with bench_e2e.py's overrides, the benchmark
model) is set up once in this process; between measurements the bench changes the
prompts per step and the response budget (a new PromptSampler and
rollout.max_new_tokens, which the controller reads every step), so the ~1 minute of
role start-up is paid once. The mini-batch stays at --mini-batch sequences (the
actor's DeepSpeed engine is built for it), so a doubled batch also doubles the
optimizer steps, as raising train.prompts_per_step in a recipe would. Each point runs
--steps steps after one warm-up step at the new shape; reported: median seconds per
step, its phases, and generated tokens per second.

    .venv/bin/python scripts/bench/bench_scaling.py [--batches 32,64,128] [--lengths 32,64,128]
        [--base-batch 64] [--base-length 64] [--mini-batch 32] [--steps 1] [--out-dir scripts/bench/results]

~5 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import common
from bench_e2e import E2ESettings, our_overrides


def set_shape(trainer, sequences: int, response_len: int) -> None:
    """Bench-only: change the batch shape of a running pipeline (see module doc)."""
    from rlhf.data import PromptSampler

    cfg = trainer.cfg
    cfg.train.prompts_per_step = sequences // cfg.rollout.n
    cfg.rollout.max_new_tokens = response_len
    trainer.sampler = PromptSampler(len(trainer.train_set), cfg.train.prompts_per_step, cfg.run.seed,
                                    cfg.data.shuffle)


def one_step(trainer) -> dict:
    metrics = trainer.step()
    trainer.step_index += 1  # as PPOTrainer.train does: new sampling seeds each step
    return metrics


def measure(trainer, sequences: int, response_len: int, steps: int) -> dict:
    set_shape(trainer, sequences, response_len)
    one_step(trainer)  # warm-up at the new shape
    records = [one_step(trainer) for _ in range(steps)]
    pick = lambda key: statistics.median(r[key] for r in records)  # noqa: E731
    phases = {k.split("/", 1)[1]: pick(k) for k in records[0] if k.startswith("timing/") and k != "timing/step"}
    return {"sequences": sequences, "response_len": response_len, "seconds_per_step": pick("timing/step"),
            "tokens_per_s": pick("perf/tokens_per_s"), "phase_seconds": phases,
            "response_length": pick("rollout/response_length")}


def run(args) -> dict:
    import ray

    from rlhf.config import load_config
    from rlhf.controller import PPOTrainer

    base = E2ESettings(prompts_per_step=args.base_batch // 8, n=8, max_new_tokens=args.base_length,
                       micro_batch=args.mini_batch)
    points = sorted({(b, args.base_length) for b in args.batches} | {(args.base_batch, n) for n in args.lengths})
    common.ray_like_pipeline()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        cfg = load_config(common.ROOT / "recipes" / "grpo_tiny.yaml",
                          [*our_overrides(base), f"train.mini_batch_size={args.mini_batch}",
                           f"run.run_dir={Path(tmp) / 'run'}"])
        trainer = PPOTrainer(cfg)
        rows = []
        try:
            trainer.setup()
            for sequences, length in points:
                rows.append(measure(trainer, sequences, length, args.steps))
                print(f"[bench] scaling {sequences} x {length}: {rows[-1]['seconds_per_step']:.2f} s/step", flush=True)
        finally:
            trainer.cleanup()
            ray.shutdown()
    return {"settings": {"n": 8, "mini_batch": args.mini_batch, "micro_batch": args.mini_batch, "steps": args.steps,
                         "base_batch": args.base_batch, "base_length": args.base_length},
            "points": rows, "wall_seconds": time.perf_counter() - started}


def report(result: dict) -> str:
    st = result["settings"]
    lines = []
    for axis, fixed_key, fixed in (("sequences", "response_len", st["base_length"]),
                                   ("response_len", "sequences", st["base_batch"])):
        pts = sorted((p for p in result["points"] if p[fixed_key] == fixed), key=lambda p: p[axis])
        if len(pts) < 2:
            continue
        first = pts[0]
        rows = [[p["sequences"], p["response_len"], p["seconds_per_step"],
                 p["seconds_per_step"] / first["seconds_per_step"], p["tokens_per_s"]] for p in pts]
        lines += [f"doubling {axis} (mini-batch {st['mini_batch']} sequences):",
                  common.format_table(["sequences", "tokens", "s / step", "x first", "gen. tokens/s"], rows)]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    parser.add_argument("--batches", type=ints, default=[32, 64, 128], help="sequences per step")
    parser.add_argument("--lengths", type=ints, default=[32, 64, 128], help="response tokens")
    parser.add_argument("--base-batch", type=int, default=64)
    parser.add_argument("--base-length", type=int, default=64)
    parser.add_argument("--mini-batch", type=int, default=32, help="sequences per optimizer step (and micro-batch)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per point after one warm-up")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()
    result = run(args)
    common.save_result("scaling", result, args.out_dir)
    print(report(result))


if __name__ == "__main__":
    main()

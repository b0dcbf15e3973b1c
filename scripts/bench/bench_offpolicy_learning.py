"""Off-policy learning: held-out exact answers per sample seen, `rollout.mode` sync vs
one_step (vs async), same recipe, same seeds, side by side in one run.

Each mode trains the recipe with the real command (bench_learning.run_ours: its own local
Ray, vLLM rollout, DeepSpeed actor, fp32); off-policy modes add the truncated-IS cap
(`algorithm.tis_cap`, --tis-cap). Seeds are interleaved (seed 1: every mode, then seed 2 ...)
so a machine that gets busier mid-run affects every mode alike. The question (issue 20):
is learning per sample at max_staleness 1 not worse than sync beyond the seed spread?
Reported per mode: mean [min-max] over seeds at each evaluation and the final difference
to sync with the seeds' standard deviations; JSON in results/offpolicy_learning-<recipe>.json.

    .venv/bin/python scripts/bench/bench_offpolicy_learning.py [--recipe recipes/grpo_tiny.yaml]
        [--modes sync,one_step,async:2] [--seeds 1,2,3] [--steps N] [--eval-every K] [--tis-cap 2.0]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import common
from bench_learning import BenchError, RunFailed, load_recipe, lscpu_model, run_ours, summarize, _cell


def mode_overrides(mode: str, tis_cap: float) -> list[str]:
    """'sync' | 'one_step' | 'async:K' -> recipe overrides."""
    name, _, staleness = mode.partition(":")
    if name == "sync" and not staleness:
        return ["rollout.mode=sync"]
    if name == "one_step" and not staleness:
        return ["rollout.mode=one_step", f"algorithm.tis_cap={tis_cap}"]
    if name == "async" and staleness.isdigit():
        return ["rollout.mode=async", f"rollout.max_staleness={staleness}", f"algorithm.tis_cap={tis_cap}"]
    raise BenchError(f"--modes: {mode!r} is not sync, one_step or async:K")


def report(result: dict) -> str:
    st, summary = result["settings"], result["summary"]
    lines = [f"CPU: {result['cpu']}",
             f"{st['recipe']}: {st['samples_per_step']} samples per step, {st['steps']} steps, seeds {st['seeds']}, "
             f"held-out exact answers on {st['eval_size']} prompts (greedy), mean [min-max]; tis_cap {st['tis_cap']}"]
    modes = list(summary)
    steps = sorted({r["step"] for rows in summary.values() for r in rows})
    table = [[step, step * st["samples_per_step"],
              *[_cell(next((r for r in summary[m] if r["step"] == step), None)) for m in modes]] for step in steps]
    lines.append(common.format_table(["step", "samples", *modes], table))
    for mode, diff in result["final_vs_sync"].items():
        lines.append(f"final {mode} - sync: {diff['difference']:+.3f} (seed std: {mode} {diff['std']:.3f}, "
                     f"sync {diff['sync_std']:.3f}); within noise: {diff['within_noise']}")
    return "\n".join(lines)


def final_vs_sync(summary: dict) -> dict:
    """Final mean difference of each mode to sync; 'within noise' when it is no more than
    two standard errors of the difference (seeds' stds, independent runs)."""
    if "sync" not in summary:
        return {}
    base = summary["sync"][-1]
    out = {}
    for mode, rows in summary.items():
        if mode == "sync":
            continue
        last = rows[-1]
        stderr = ((last["std"] ** 2 + base["std"] ** 2) / max(last["seeds"], 1)) ** 0.5
        difference = last["mean"] - base["mean"]
        out[mode] = {"difference": difference, "std": last["std"], "sync_std": base["std"],
                     "within_noise": difference >= -2 * stderr}
    return out


def run(args) -> dict:
    recipe = args.recipe.resolve()
    modes = args.modes.split(",")
    per_mode = {mode: mode_overrides(mode, args.tis_cap) for mode in modes}
    base = [f"data.eval_size={args.eval_size}"]
    cfg = load_recipe(recipe, base)
    for overrides in per_mode.values():  # a bad mode or key fails here, before any run
        load_recipe(recipe, base + overrides)
    steps = args.steps or cfg.run.total_steps
    eval_every = args.eval_every if args.eval_every is not None else cfg.run.eval_every
    cpu = lscpu_model()
    print(f"[bench] off-policy learning: CPU {cpu}; {recipe.name}, {steps} steps, modes {modes}, seeds {args.seeds}",
          flush=True)
    runs = {mode: {} for mode in modes}
    with tempfile.TemporaryDirectory(prefix="bench-offpolicy-") as tmp:
        for seed in args.seeds:
            for mode, overrides in per_mode.items():
                work = Path(tmp) / f"{mode.replace(':', '-')}-{seed}"
                work.mkdir(parents=True)
                out = run_ours(recipe, base + overrides, seed, steps, eval_every, work)
                runs[mode][seed] = out
                first, last = out["evals"][0], out["evals"][-1]
                print(f"[bench] {mode} seed {seed}: held-out exact {first['pass_rate']:.3f} -> {last['pass_rate']:.3f} "
                      f"at step {last['step']} ({out['wall_seconds']:.0f}s)", flush=True)
    summary = {mode: summarize(r, cfg.rollout_batch_size) for mode, r in runs.items()}
    return {"cpu": cpu, "settings": {
        "recipe": str(recipe.relative_to(common.ROOT)) if recipe.is_relative_to(common.ROOT) else str(recipe),
        "modes": modes, "seeds": args.seeds, "steps": steps, "eval_every": eval_every, "eval_size": args.eval_size,
        "samples_per_step": cfg.rollout_batch_size, "tis_cap": args.tis_cap},
        "summary": summary, "final_vs_sync": final_vs_sync(summary),
        "runs": {mode: {str(k): v for k, v in r.items()} for mode, r in runs.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=common.ROOT / "recipes" / "grpo_tiny.yaml")
    parser.add_argument("--modes", default="sync,one_step")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--eval-size", type=int, default=256)
    parser.add_argument("--tis-cap", type=float, default=2.0)
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()
    from rlhf.config import ConfigError

    try:
        result = run(args)
    except (BenchError, ConfigError) as err:
        print(f"bench_offpolicy_learning: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:
        print(f"bench_offpolicy_learning: {err}", file=sys.stderr)
        return 1
    common.save_result(f"offpolicy_learning-{args.recipe.stem}", result, args.out_dir)
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

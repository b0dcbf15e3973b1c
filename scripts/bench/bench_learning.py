"""Learning parity: held-out exact answers per sample seen, our GRPO vs TRL's GRPOTrainer.

Both sides train the recipe's policy (default recipes/grpo_tiny.yaml: the tiny kit's
warm-started policy on its arithmetic task) with the recipe's settings, read with
rlhf.config.load_config so the bench follows the recipe: group size, prompts per step,
learning rate (constant, the recipe's warm-up), KL in the loss (k3, TRL's beta), clip
low/high, loss aggregation (seq-mean-token-mean = TRL "grpo"), group-std advantages,
temperature, top-p/k, response budget, mini/micro batches (TRL: steps_per_generation
and gradient accumulation, so both take the same optimizer steps per batch), PPO
epochs (TRL: num_iterations), AdamW betas, grad clip. Both in fp32 (bf16 is emulated
and ~400x slower on AVX2-only CPUs). Per seed, TRL gets the train prompts in the very
order our sampler visits them, and the held-out prompts (first --eval-size rows of
the recipe's eval set) as our pipeline tokenized them; rewards on both sides come from
the recipe's reward specs through the project's `rewards` package.

Our side is the real command, `python -m rlhf.cli train <recipe> <overrides>` (its own
local Ray, vLLM rollout, DeepSpeed actor, in-process driver); held-out greedy exact
answers are its eval/pass_rate every --eval-every steps. TRL's side is trl_learning.py
in TRL's own venv (bench_e2e.trl_venv(), made on first use, ~2 minutes): a callback
runs greedy HF generate on the same prompts and counts reward >= 1. Reported per side:
mean and min-max over seeds of held-out exact answers at each evaluation, against
samples seen (steps x prompts x n) and training seconds (evaluation and start-up
excluded), and the ratio ours / TRL; JSON in scripts/bench/results/learning-<recipe>.json. `--sides ours` measures any recipe
(e.g. PPO with a critic) over seeds, without the TRL comparison.

    .venv/bin/python scripts/bench/bench_learning.py [--recipe recipes/grpo_tiny.yaml]
        [--seeds 1,2,3] [--steps N (default: run.total_steps)] [--eval-every K (default: run.eval_every)]
        [--eval-size 256] [--sides ours,trl] [--override key=value ...] [--out-dir scripts/bench/results]
        [--work-dir DIR (keep the runs' logs)]

A quick check of the machinery: --seeds 1 --steps 2 --eval-every 1.
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
from bench_e2e import trl_venv, trl_versions

HERE = Path(__file__).resolve().parent
# Our loss aggregation modes -> TRL's loss_type with the same normaliser.
TRL_LOSS_TYPE = {"seq-mean-token-mean": "grpo", "token-mean": "dapo", "seq-mean-token-sum-norm": "dr_grpo"}


class BenchError(Exception):
    """A recipe setting TRL's GRPOTrainer cannot match (or bad bench input)."""


class RunFailed(Exception):
    """One side's run exited non-zero (the message holds its log's tail)."""


# ==================================================================== settings from the recipe
def load_recipe(recipe: Path, overrides: list[str]):
    from rlhf.config import load_config

    return load_config(recipe, overrides)


def check_comparable(cfg) -> None:
    """Refuse settings with no TRL counterpart: the comparison would not be like for like."""
    a, r = cfg.algorithm, cfg.rollout
    unmatched = {
        "algorithm.adv_estimator": (a.adv_estimator != "grpo", "grpo"),
        "algorithm.kl.in_reward": (a.kl_in_reward, "false (TRL has KL in the loss only)"),
        "algorithm.kl.loss_estimator": (a.kl.loss_coef > 0 and a.kl.loss_estimator != "k3", "k3"),
        "algorithm.policy_loss": (a.policy_loss != "vanilla", "vanilla"),
        "algorithm.dual_clip": (a.dual_clip is not None, "null"),
        "algorithm.tis_cap": (a.tis_cap is not None, "null"),
        "algorithm.overlong_buffer": (a.overlong_buffer != 0, "0"),
        "algorithm.loss_agg_mode": (a.loss_agg_mode not in TRL_LOSS_TYPE, " | ".join(TRL_LOSS_TYPE)),
        "rollout.eval_temperature": (r.eval_temperature != 0, "0 (greedy)"),
        "rollout.stop_token_ids": (bool(r.stop_token_ids), "[]"),
        "model.reward_model": (cfg.model.reward_model is not None, "null (reward functions only)"),
        "model.reference": (cfg.model.reference not in (None, cfg.model.policy), "null (the policy)"),
        "data.eval_path": (cfg.data.eval_path is None, "a held-out set"),
    }
    for key, (bad, wanted) in unmatched.items():
        if bad:
            raise BenchError(f"config key '{key}' is {_value(cfg, key)!r}; the TRL comparison needs {wanted}")


def _value(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def trl_trainer_settings(cfg) -> dict:
    """GRPOConfig values equal to the recipe's (see trl_learning.grpo_config)."""
    from workers.trainer_base import ADAM_BETAS

    a, t, actor = cfg.algorithm, cfg.train, cfg.actor
    return {"micro_batch": t.micro_batch_size, "grad_accum": t.mini_batch_size // t.micro_batch_size,
            "steps_per_generation": cfg.rollout_batch_size // t.micro_batch_size, "num_iterations": t.ppo_epochs,
            "temperature": cfg.rollout.temperature, "top_p": cfg.rollout.top_p, "top_k": max(cfg.rollout.top_k, 0),
            "lr": actor.lr, "warmup_steps": actor.warmup_steps, "weight_decay": actor.weight_decay,
            "grad_clip": actor.grad_clip, "adam_betas": list(ADAM_BETAS), "adam_eps": 1e-8,
            "gradient_checkpointing": actor.grad_checkpointing, "kl_coef": a.kl.loss_coef, "clip_low": a.clip_low,
            "clip_high": a.clip_high, "loss_type": TRL_LOSS_TYPE[a.loss_agg_mode],
            "scale_rewards": "group" if a.norm_adv_by_std else "none", "entropy_coef": a.entropy_coef}


def shared_data(cfg) -> dict:
    """The held-out prompts (tokenized as our pipeline does) and the train set, loaded once."""
    from transformers import AutoTokenizer

    from rlhf.data import load_prompts
    from rlhf.tiny import resolve

    tok = AutoTokenizer.from_pretrained(resolve(cfg.model.policy))
    train = load_prompts(cfg.data.train_path, cfg.data, tok)
    held_out = load_prompts(cfg.data.eval_path, cfg.data, tok, limit=cfg.data.eval_size)
    return {"train": train, "held_out": held_out}


def train_rows_in_our_order(cfg, train, steps: int, seed: int) -> list[dict]:
    """The prompts our pipeline trains on with this seed, in its order (rlhf.data.PromptSampler)."""
    from rlhf.data import PromptSampler

    sampler = PromptSampler(len(train), cfg.train.prompts_per_step, seed, cfg.data.shuffle)
    picked = train.rows([i for _ in range(steps) for i in sampler.next_indices()])
    return [{"prompt": p, cfg.data.label_key: label, **{c: v[k] for c, v in picked.columns.items()}}
            for k, (p, label) in enumerate(zip(picked.prompts, picked.labels))]


# ==================================================================== our side
def run_ours(recipe: Path, overrides: list[str], seed: int, steps: int, eval_every: int, work: Path) -> dict:
    from rlhf.metrics import read_metrics

    run_dir = work / "run"
    cmd = [sys.executable, "-m", "rlhf.cli", "train", str(recipe), *overrides, f"run.seed={seed}",
           f"run.total_steps={steps}", f"run.eval_every={eval_every}", "model.dtype=fp32", "rollout.dtype=float32",
           f"run.run_dir={run_dir}", "run.export_hf=false", "run.plots=false", "run.log_samples_every=0",
           "run.save_every=0"]
    wall = _run_logged(cmd, work / "log.txt")
    records = read_metrics(run_dir)
    step_seconds = {r["step"]: r.get("timing/step", 0.0) for r in records}
    train_reward = {r["step"]: r["rollout/reward_mean"] for r in records if "rollout/reward_mean" in r}
    evals, previous = [], 0
    for r in records:
        if "eval/pass_rate" in r:
            trained = sum(sec for step, sec in step_seconds.items() if step <= r["step"])
            # training reward: mean of rollout/reward_mean over the steps since the previous evaluation
            window = [v for step, v in train_reward.items() if previous < step <= r["step"]]
            evals.append({"step": r["step"], "train_seconds": trained, "pass_rate": r["eval/pass_rate"],
                          "reward_mean": r["eval/reward_mean"],
                          "train_reward": statistics.mean(window) if window else None})
            previous = r["step"]
    return {"evals": evals, "wall_seconds": wall}


# ==================================================================== TRL's side
def check_trl_imports_rewards(python: Path) -> None:
    code = f"import sys; sys.path.insert(0, {str(common.ROOT)!r}); import rewards"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise BenchError(f"TRL's venv ({python}) cannot import the project's rewards package: {last}")


def run_trl(cfg, data: dict, seed: int, steps: int, eval_every: int, work: Path, python: Path) -> dict:
    held_out = data["held_out"]
    settings = {
        "model_path": _policy_path(cfg), "seed": seed, "steps": steps, "eval_every": eval_every,
        "n": cfg.rollout.n, "max_new_tokens": cfg.rollout.max_new_tokens,
        "optimizer_steps_per_rl_step": cfg.mini_batches_per_epoch * cfg.train.ppo_epochs,
        "trl": trl_trainer_settings(cfg), "label_key": cfg.data.label_key,
        "extra_columns": sorted(data["train"].columns),
        "reward_specs": [{"name": f.name, "fn": f.fn, "weight": f.weight, "kwargs": dict(f.kwargs)}
                         for f in cfg.reward.functions],
        "train_rows": train_rows_in_our_order(cfg, data["train"], steps, seed),
        "eval_prompt_ids": held_out.prompt_ids, "eval_prompts": held_out.prompts, "eval_labels": held_out.labels,
        "eval_columns": held_out.columns,
    }
    (work / "settings.json").write_text(json.dumps(settings))
    wall = _run_logged([str(python), str(HERE / "trl_learning.py"), str(work / "settings.json"), str(work)],
                       work / "log.txt")
    evals = [json.loads(line) for line in (work / "evals.jsonl").read_text().splitlines()]
    return {"evals": evals, "wall_seconds": wall}


def _policy_path(cfg) -> str:
    from rlhf.tiny import resolve

    return resolve(cfg.model.policy)


def _run_logged(cmd: list[str], log_path: Path) -> float:
    started = time.time()
    with open(log_path, "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=common.ROOT)
    if done.returncode:
        raise RunFailed(f"{' '.join(cmd[:4])} ... failed (exit {done.returncode}); the end of its log:\n"
                        f"{log_path.read_text()[-3000:]}")
    return time.time() - started


# ==================================================================== summary
def summarize(runs: dict[int, dict], samples_per_step: int) -> list[dict]:
    """Per evaluated step: mean / min / max / std over seeds of held-out exact answers."""
    steps = sorted({e["step"] for run in runs.values() for e in run["evals"]})
    rows = []
    for step in steps:
        at = [e for run in runs.values() for e in run["evals"] if e["step"] == step]
        rates = [e["pass_rate"] for e in at]
        rows.append({"step": step, "samples": step * samples_per_step, "seeds": len(at),
                     "mean": statistics.mean(rates), "min": min(rates), "max": max(rates),
                     "std": statistics.stdev(rates) if len(rates) > 1 else 0.0,
                     "train_seconds": statistics.mean(e["train_seconds"] for e in at),
                     "train_reward": _mean_or_none([e.get("train_reward") for e in at])})
    return rows


def report(result: dict) -> str:
    sides = result["summary"]
    ours, trl = sides.get("ours", []), sides.get("trl", [])
    by_step = {r["step"]: r for r in trl}
    st = result["settings"]
    lines = [f"CPU: {result['cpu']}",
             f"{st['recipe']}: {st['prompts_per_step']} prompts x {st['n']} samples per step, {st['steps']} steps, "
             f"seeds {st['seeds']}, held-out exact answers on {st['eval_size']} prompts (greedy), mean [min-max]"]
    rows = []
    for step in sorted({r["step"] for side in sides.values() for r in side}):
        o = next((r for r in ours if r["step"] == step), None)
        t = by_step.get(step)
        rows.append([step, step * st["samples_per_step"], _cell(o), _cell(t),
                     o["mean"] / t["mean"] if o and t and t["mean"] else float("nan"),
                     o["train_reward"] if o and o.get("train_reward") is not None else float("nan"),
                     o["train_seconds"] if o else float("nan"), t["train_seconds"] if t else float("nan")])
    lines.append(common.format_table(["step", "samples", "ours", "TRL", "ours / TRL", "ours train reward",
                                      "ours train s", "TRL train s"], rows))
    if ours and trl:
        lines.append(f"final (step {ours[-1]['step']}): ours {_cell(ours[-1])}, TRL {_cell(trl[-1])}, "
                     f"ours / TRL {result['final_ratio']:.2f}")
    return "\n".join(lines)


def _mean_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def _cell(row: dict | None) -> str:
    if row is None:
        return "n/a"
    return f"{row['mean']:.3f} [{row['min']:.3f}-{row['max']:.3f}]"


def lscpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                "unknown")


# ==================================================================== main
def run(args) -> dict:
    recipe = args.recipe.resolve()
    overrides = [*args.override, f"data.eval_size={args.eval_size}"]
    cfg = load_recipe(recipe, overrides)
    sides = args.sides.split(",")
    if "trl" in sides:  # ours alone (e.g. PPO with a critic) needs no TRL counterpart
        check_comparable(cfg)
    steps = args.steps or cfg.run.total_steps
    eval_every = args.eval_every if args.eval_every is not None else cfg.run.eval_every
    if set(sides) - {"ours", "trl"}:
        raise BenchError(f"--sides takes ours and/or trl, got {args.sides!r}")
    if steps < 1 or eval_every < 0 or args.eval_size < 1 or not args.seeds:
        raise BenchError(f"need --steps >= 1, --eval-every >= 0, --eval-size >= 1 and a seed; got {steps}, "
                         f"{eval_every}, {args.eval_size}, {args.seeds}")
    python = trl_venv() if "trl" in sides else None
    if python:
        check_trl_imports_rewards(python)
    data = shared_data(cfg)
    cpu = lscpu_model()
    print(f"[bench] learning: CPU {cpu}; {recipe.name}, {steps} steps, eval every {eval_every}, seeds {args.seeds}",
          flush=True)
    per_seed = {side: {} for side in sides}
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as tmp:
        for seed in args.seeds:
            for side in sides:
                work = (args.work_dir or Path(tmp)) / f"{side}-{seed}"
                work.mkdir(parents=True, exist_ok=True)
                print(f"[bench] learning: {side}, seed {seed} ...", flush=True)
                if side == "ours":
                    out = run_ours(recipe, overrides, seed, steps, eval_every, work)
                else:
                    out = run_trl(cfg, data, seed, steps, eval_every, work, python)
                per_seed[side][seed] = out
                last = out["evals"][-1]
                print(f"[bench] learning {side} seed {seed}: held-out exact {out['evals'][0]['pass_rate']:.3f} -> "
                      f"{last['pass_rate']:.3f} at step {last['step']} ({out['wall_seconds']:.0f}s)", flush=True)
    samples_per_step = cfg.rollout_batch_size
    summary = {side: summarize(runs, samples_per_step) for side, runs in per_seed.items()}
    result = {"cpu": cpu, "settings": {
        "recipe": str(recipe.relative_to(common.ROOT)) if recipe.is_relative_to(common.ROOT) else str(recipe),
        "overrides": args.override, "seeds": args.seeds, "steps": steps, "eval_every": eval_every,
        "eval_size": len(data["held_out"]), "prompts_per_step": cfg.train.prompts_per_step, "n": cfg.rollout.n,
        "samples_per_step": samples_per_step, "trl": trl_trainer_settings(cfg)},
        "summary": summary, "runs": {side: {str(k): v for k, v in runs.items()} for side, runs in per_seed.items()}}
    if python:
        result["trl_versions"] = trl_versions(python)
    if summary.get("ours") and summary.get("trl"):
        result["final_ratio"] = summary["ours"][-1]["mean"] / max(summary["trl"][-1]["mean"], 1e-9)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=common.ROOT / "recipes" / "grpo_tiny.yaml")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=None, help="RL steps (default: the recipe's run.total_steps)")
    parser.add_argument("--eval-every", type=int, default=None, help="default: the recipe's run.eval_every")
    parser.add_argument("--eval-size", type=int, default=256, help="first N held-out prompts")
    parser.add_argument("--sides", default="ours,trl")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override applied to both sides (repeatable)")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep each run's logs, metrics and settings here (default: a temporary folder)")
    args = parser.parse_args()
    from rlhf.config import ConfigError

    try:
        result = run(args)
    except (BenchError, ConfigError) as err:
        print(f"bench_learning: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:
        print(f"bench_learning: {err}", file=sys.stderr)
        return 1
    common.save_result(f"learning-{args.recipe.stem}", result, args.out_dir)
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End to end: GRPO steps of our pipeline vs TRL's GRPOTrainer, same model and settings.

Both sides train the benchmark model (~24M-param Qwen2, common.py) on the tiny
arithmetic prompts with the same group size, prompts per step, response length
(every response runs to the budget: the model cannot emit EOS; `--workload long_tail`: a
variant of the model whose responses end at EOS with long-tailed lengths, common.LONG_TAIL_SPEC,
its length histogram reported), learning rate,
clipping (0.2 / 0.28), KL-in-loss coefficient (k3, so both run a reference model),
loss aggregation (per-sequence token mean), reward (bench_reward.py), one optimizer
step per GRPO step and the same number of steps.

Our side is the real command, `python -m rlhf.cli train recipes/grpo_tiny.yaml
<overrides>`, in a fresh process (its own local Ray, vLLM rollout, DeepSpeed ZeRO-2
actor, bf16). It runs as shipped and, to show what two choices are worth, with one
torch thread per role (`cluster.torch_threads=1`) and with the separate old-log-prob
pass (`train.old_logprobs_from_update=false`).
TRL's side is trl_grpo.py in TRL's own venv (made here on first use: python3.11,
torch CPU wheel, trl==TRL_VERSION), CPU, HF generate, in the fastest setting that
worked here (TRL_SETTING). Reported: seconds from the command to the end of the first
step (start-up), the median seconds per step after the first, generated tokens per
second and peak resident memory of the whole process tree (sampled every 0.25 s).

    .venv/bin/python scripts/bench/bench_e2e.py [--steps 4] [--prompts-per-step 16] [--n 8]
        [--max-new-tokens 128] [--sides ours,ours_one_thread,ours_separate_logprobs,trl]
        [--out-dir scripts/bench/results]

~8 minutes on 2 cores (~2 per side; the first run adds ~1 minute to make TRL's venv).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import common
from workers import device as dev  # noqa: E402 (common puts the repo root on sys.path)

HERE = Path(__file__).resolve().parent
TRL_VERSION = "1.16.0"
# The CPU torch wheel comes from pip's find-links; httpx, tenacity and pebble are what the
# project's rewards package (imported by trl_learning.py) needs.
TRL_PACKAGES = ["torch==2.13.0+cpu", f"trl=={TRL_VERSION}", "httpx==0.29.0", "tenacity==9.2.1", "pebble==5.2.3"]
# TRL's fastest setting: on a CPU with native bf16, bf16 autocast over fp32 weights
# (`bf16=True`, as our DeepSpeed bf16 keeps fp32 master weights); elsewhere fp32 (bf16 is
# emulated and ~400x slower on AVX2, ENVIRONMENT.md), as our "auto" dtypes choose. No
# gradient checkpointing (GRPOConfig turns it on by default; it recomputes the forward).
# The other settings tried (--sides trl_bf16_weights,...) were no faster; see BENCHMARKS.md.
TRL_SETTING = {"bf16": dev.detect().supports_bf16, "weights_dtype": "float32", "gradient_checkpointing": False}


@dataclass
class E2ESettings:
    prompts_per_step: int = 16
    n: int = 8                  # GRPO group size
    max_new_tokens: int = 128
    micro_batch: int = 64       # sequences per forward/backward
    lr: float = 1e-5
    steps: int = 4              # the first is start-up / warm-up: 3 timed
    kl_coef: float = 0.01       # k3 KL in the loss (TRL's beta)
    clip_low: float = 0.2
    clip_high: float = 0.28
    seed: int = 1
    workload: str = "fixed"     # common.WORKLOADS: "fixed" (every response runs to the budget) | "long_tail"

    @property
    def sequences(self) -> int:
        return self.prompts_per_step * self.n


def our_overrides(s: E2ESettings) -> list[str]:
    """recipes/grpo_tiny.yaml overrides that match the settings (also used by bench_scaling.py)."""
    reward = f"{HERE / 'bench_reward.py'}:arithmetic_with_digit_bonus"
    return [f"model.policy={common.bench_model_path(s.workload)}", "data.eval_path=null", f"rollout.n={s.n}",
            f"rollout.max_new_tokens={s.max_new_tokens}", f"train.prompts_per_step={s.prompts_per_step}",
            f"train.mini_batch_size={s.sequences}", f"train.micro_batch_size={s.micro_batch}", "train.ppo_epochs=1",
            f"actor.lr={s.lr}", f"algorithm.kl.loss_coef={s.kl_coef}", f"algorithm.clip_low={s.clip_low}",
            f"algorithm.clip_high={s.clip_high}", f"run.total_steps={s.steps}", f"run.seed={s.seed}",
            "run.export_hf=false", "run.plots=false", "run.log_samples_every=0", "run.save_every=0",
            f"reward.functions=[{{name: task, fn: '{reward}'}}]"]


# ==================================================================== process-tree watching
def tree_rss_gib(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**30


def watch(cmd: list[str], log_path: Path, first_step_done, env: dict | None = None) -> dict:
    """Run `cmd`, sampling its process tree's memory and the moment `first_step_done()`
    turns true. Returns wall seconds, seconds to the first step, peak RSS (GiB)."""
    launched = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=common.ROOT,
                                env={**os.environ, **(env or {})})
        peak, first = 0.0, None
        while proc.poll() is None:
            peak = max(peak, tree_rss_gib(proc.pid))
            if first is None and first_step_done():
                first = time.time() - launched
            time.sleep(0.25)
    if proc.returncode:
        tail = log_path.read_text()[-4000:]
        raise RuntimeError(f"{cmd[:4]} failed with exit code {proc.returncode}:\n{tail}")
    return {"wall_seconds": time.time() - launched, "first_step_seconds": first, "peak_rss_gib": peak}


# ==================================================================== our side
def run_ours(s: E2ESettings, work: Path, extra: list[str]) -> dict:
    from rlhf.metrics import read_metrics

    run_dir = work / "run"
    metrics = run_dir / "metrics.jsonl"
    cmd = [sys.executable, "-m", "rlhf.cli", "train", str(common.ROOT / "recipes" / "grpo_tiny.yaml"),
           *our_overrides(s), *extra, f"run.run_dir={run_dir}"]
    watched = watch(cmd, work / "log.txt", lambda: metrics.exists() and metrics.stat().st_size > 0)
    steps = [r for r in read_metrics(run_dir) if r["step"] >= 1]
    later = steps[1:] or steps
    tokens = [r["perf/tokens_per_s"] * r["timing/step"] for r in steps]
    phases = {k.split("/", 1)[1]: statistics.median(r[k] for r in later)
              for k in later[0] if k.startswith("timing/") and k != "timing/step"}
    roles_up = next((float(line.split("roles up in ")[1].split("s")[0]) for line in open(work / "log.txt")
                     if "roles up in " in line), None)
    return {**watched, "step_seconds": [r["timing/step"] for r in steps],
            "seconds_per_step": statistics.median(r["timing/step"] for r in later),
            "tokens_per_step": statistics.median(tokens), "phase_seconds": phases, "roles_up_seconds": roles_up,
            "reported_peak_rss_gib": steps[-1].get("perf/peak_pipeline_rss_gb"),
            "reward_first_last": [steps[0]["rollout/reward_mean"], steps[-1]["rollout/reward_mean"]],
            "response_length": steps[-1]["rollout/response_length"], "overrides": extra}


# ==================================================================== TRL's side
def trl_venv() -> Path:
    """TRL's own venv (python3.11 -m venv + pip), made once in the bench cache."""
    venv = common.CACHE_DIR / "trl-venv"
    python = venv / "bin" / "python"
    check = [str(python), "-c", f"import trl, httpx, tenacity, pebble, sys; sys.exit(trl.__version__ != '{TRL_VERSION}')"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"[bench] making TRL's venv at {venv} (trl=={TRL_VERSION}, ~1 minute)", flush=True)
    subprocess.run(["python3.11", "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *TRL_PACKAGES], check=True)
    subprocess.run(check, check=True)
    return python


def trl_versions(python: Path) -> dict:
    code = ("import json, torch, transformers, trl, accelerate; print(json.dumps({m.__name__: m.__version__ "
            "for m in (trl, transformers, torch, accelerate)}))")
    return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)


def run_trl(s: E2ESettings, work: Path, setting: dict) -> dict:
    from rlhf.tiny import resolve

    python = trl_venv()
    settings = {"model_path": common.bench_model_path(s.workload), "prompts_path": resolve("tiny:arith_train"),
                "num_prompts": 4096, "steps": s.steps, "micro_batch": s.micro_batch,
                "grad_accum": s.sequences // s.micro_batch, "n": s.n, "max_new_tokens": s.max_new_tokens,
                "lr": s.lr, "kl_coef": s.kl_coef, "clip_low": s.clip_low, "clip_high": s.clip_high,
                "seed": s.seed, **setting}
    (work / "settings.json").write_text(json.dumps(settings))
    events = work / "steps.jsonl"
    launched = time.time()
    watched = watch([str(python), str(HERE / "trl_grpo.py"), str(work / "settings.json"), str(work)],
                    work / "log.txt", lambda: events.exists() and events.stat().st_size > 0)
    records = [json.loads(line) for line in events.read_text().splitlines()]
    ends = [r["time"] for r in records if r["event"] == "step_end"]
    logs = [r["logs"] for r in records if r["event"] == "log" and "completions/mean_length" in r["logs"]]
    between_ends = [b - a for a, b in zip(ends, ends[1:])]  # wall clock of steps 2.. (the first includes start-up)
    lengths = [log["completions/mean_length"] for log in logs]
    generate = [r["seconds"] for r in records if r["event"] == "generate"]
    return {**watched, "first_step_seconds": ends[0] - launched, "step_seconds": between_ends,
            "trl_logged_step_time": [log.get("step_time") for log in logs],
            "phase_seconds": {"generate": statistics.median(generate[1:] or generate)} if generate else {},
            "seconds_per_step": statistics.median(between_ends),
            "tokens_per_step": statistics.median(lengths) * s.sequences, "response_length": lengths[-1],
            "reward_first_last": [logs[0]["reward"], logs[-1]["reward"]],
            "torch_threads": records[-1].get("torch_threads"), "setting": setting, "versions": trl_versions(python)}


# ==================================================================== the comparison
SIDES = {
    "ours": lambda s, work: run_ours(s, work, []),
    "ours_one_thread": lambda s, work: run_ours(s, work, ["cluster.torch_threads=1"]),
    "ours_separate_logprobs": lambda s, work: run_ours(s, work, ["train.old_logprobs_from_update=false"]),
    "ours_no_packing": lambda s, work: run_ours(s, work, ["train.packing=never"]),
    "trl": lambda s, work: run_trl(s, work, TRL_SETTING),
    "trl_default_checkpointing": lambda s, work: run_trl(s, work, {**TRL_SETTING, "gradient_checkpointing": True}),
    "trl_bf16_weights": lambda s, work: run_trl(s, work, {**TRL_SETTING, "weights_dtype": "bfloat16"}),
    "trl_continuous_batching": lambda s, work: run_trl(s, work, {**TRL_SETTING, "continuous_batching": True}),
}


def run(s: E2ESettings, sides: list[str]) -> dict:
    out = {"settings": {**dataclasses.asdict(s), "sequences": s.sequences}, "sides": {}}
    if s.workload != "fixed":  # the shape of the work: one sampled response per prompt, HF generate
        out["response_lengths"] = common.response_length_histogram(
            common.bench_model_path(s.workload), common.arithmetic_prompts(s.sequences), s.max_new_tokens)
        print(f"[bench] e2e {s.workload} response lengths: {out['response_lengths']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        for name in sides:
            work = Path(tmp) / name
            work.mkdir()
            print(f"[bench] e2e: {name} ...", flush=True)
            side = SIDES[name](s, work)
            side["tokens_per_s"] = side["tokens_per_step"] / side["seconds_per_step"]
            out["sides"][name] = side
            print(f"[bench] e2e {name}: {side['seconds_per_step']:.2f} s/step, {side['tokens_per_s']:,.0f} tok/s, "
                  f"first step after {side['first_step_seconds']:.0f}s, peak {side['peak_rss_gib']:.1f} GiB", flush=True)
    trl = out["sides"].get("trl")
    if trl:
        for name, side in out["sides"].items():
            side["throughput_vs_trl"] = side["tokens_per_s"] / trl["tokens_per_s"]
    return out


def startup_seconds(side: dict) -> float:
    """Command -> step 1 begins: the end of step 1 minus its own duration (ours:
    timing/step, TRL: its logged step_time)."""
    first = side["trl_logged_step_time"][0] if "trl_logged_step_time" in side else side["step_seconds"][0]
    return side["first_step_seconds"] - first


def report(result: dict) -> str:
    st = result["settings"]
    rows = [[name, side["seconds_per_step"], side["tokens_per_s"], side.get("throughput_vs_trl", float("nan")),
             startup_seconds(side), side["first_step_seconds"], side["peak_rss_gib"]]
            for name, side in result["sides"].items()]
    head = (f"GRPO, {st['prompts_per_step']} prompts x {st['n']} samples x {st['max_new_tokens']} tokens per step, "
            f"{st['steps']} steps, lr {st['lr']}, workload {st.get('workload', 'fixed')}")
    if "response_lengths" in result:
        h = result["response_lengths"]
        head += (f"\nresponse lengths (tokens, {h['samples']} samples): {h['bins']}, mean {h['mean']:.1f}, "
                 f"median {h['median']}, real tokens {h['real_token_fraction']:.0%} of the padded batch")
    lines = [head, common.format_table(["e2e", "s / step", "gen. tokens/s", "x TRL", "command -> step 1 starts s",
                                        "-> step 1 ends s", "peak RSS GiB"], rows)]
    for name, side in result["sides"].items():
        if side.get("phase_seconds"):
            lines.append(f"{name} phases (s, median): "
                         + ", ".join(f"{k} {v:.2f}" for k, v in side["phase_seconds"].items()))
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = E2ESettings()
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--prompts-per-step", type=int, default=defaults.prompts_per_step)
    parser.add_argument("--n", type=int, default=defaults.n)
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--micro-batch", type=int, default=defaults.micro_batch)
    parser.add_argument("--sides", default="ours,ours_one_thread,ours_separate_logprobs,trl", help=f"comma list of {sorted(SIDES)}")
    parser.add_argument("--workload", choices=sorted(common.WORKLOADS), default="fixed",
                        help="fixed: every response runs to the budget; long_tail: responses end at EOS, long-tailed")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()
    s = E2ESettings(prompts_per_step=args.prompts_per_step, n=args.n, max_new_tokens=args.max_new_tokens,
                    micro_batch=min(args.micro_batch, args.prompts_per_step * args.n), steps=args.steps,
                    workload=args.workload)
    result = run(s, args.sides.split(","))
    common.save_result("e2e" if args.workload == "fixed" else f"e2e-{args.workload}", result, args.out_dir)
    print(report(result))


if __name__ == "__main__":
    main()

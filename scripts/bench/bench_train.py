"""Training: tokens/s of our actor's update vs a bare DeepSpeed loop on the same data.

The batch is real: the benchmark model samples responses to arithmetic prompts
(HF generate, temperature 1), laid out by the controller's own `build_batch`, with
GRPO advantages of random scores and old/reference log-probs from our actor. Our side
is the pipeline's path: an `ActorWorker` group (1 rank, the default `actor` config:
ZeRO-2, bf16 on this CPU, 0.5 Ray CPU) started by `WorkerGroup`, timed around its
`update` verb (GRPO clipped loss + k3 KL term, as in recipes/grpo_tiny.yaml). The
bare side (bare_deepspeed.py, a plain process) runs deepspeed.initialize with the
same DeepSpeed config (ZeRO stage, bf16, micro-batch, AdamW) and a plain
importance-weighted policy-gradient loss on the same token tensors.

Before timing, our actor gets its share of the cores as the controller gives it when
the actor trains alone (`share_cores(1)`: all cores); a second run gives it one torch
thread (`ours, one thread`: what Ray gives a fractional-CPU actor, and what
`cluster.torch_threads=1` fixes) to show what the threads are worth. Trained tokens = real
(prompt + response) tokens that go through forward and backward; model FLOP/s
~6 x params per trained token, divided by the bf16 matmul roof measured here.

    .venv/bin/python scripts/bench/bench_train.py [--sequences 64] [--response-len 128]
        [--micro-batch 64] [--repeats 3] [--out-dir scripts/bench/results]

~3 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import common

HERE = Path(__file__).resolve().parent


def sample_batch(path: str, sequences: int, n: int, response_len: int, seed: int = 0):
    """A Batch of responses sampled by the model itself (HF generate), with GRPO
    advantages of random scores (a random-init model earns no task reward)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.algorithms import ADV_ESTIMATORS, AdvantageInputs
    from rlhf.generation import build_batch

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    prompts = [tok.encode(p) for p in common.arithmetic_prompts(sequences // n) for _ in range(n)]
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), do_sample=True,
                             temperature=1.0, top_k=0, max_new_tokens=response_len, min_new_tokens=response_len,
                             pad_token_id=tok.pad_token_id)
    responses = out[:, width:].tolist()
    batch = build_batch(prompts, responses, [[0.0] * len(r) for r in responses],
                        torch.arange(sequences) // n, torch.zeros(sequences, dtype=torch.long), response_len,
                        tok.pad_token_id)
    scores = torch.randn(sequences, generator=torch.Generator().manual_seed(seed))
    inputs = AdvantageInputs(token_rewards=torch.zeros_like(batch.response_mask), scores=scores,
                             response_mask=batch.response_mask, group_ids=batch.group_ids, values=None,
                             gamma=1.0, lam=1.0, norm_adv_by_std=True)
    advantages, returns = ADV_ESTIMATORS.get("grpo")(inputs)
    return batch.replace(scores=scores, advantages=advantages, returns=returns)


def recipe_config(args):
    """recipes/grpo_tiny.yaml with the benchmark model and batch shape."""
    from rlhf.config import load_config

    return load_config(common.ROOT / "recipes" / "grpo_tiny.yaml", [
        f"model.policy={common.bench_model_path()}", f"train.mini_batch_size={args.sequences}",
        f"train.micro_batch_size={args.micro_batch}", f"train.prompts_per_step={args.sequences // args.n}",
        f"rollout.n={args.n}", f"rollout.max_new_tokens={args.response_len}"])


def start_actor(cfg):
    """The actor role as the controller starts it (rlhf/roles.py, PPORoles.start)."""
    from workers.actor import ActorWorker
    from workers.group import WorkerGroup

    return WorkerGroup(ActorWorker, cfg.actor.num_workers, num_cpus=cfg.actor.num_cpus, num_gpus=cfg.actor.num_gpus,
                       name="actor", init_kwargs=dict(model_path=cfg.model.policy, trainer_cfg=cfg.actor,
                                                      algo_cfg=cfg.algorithm, train_cfg=cfg.train,
                                                      seed=cfg.run.seed, dtype=cfg.model.dtype))


def time_ours(cfg, batch, repeats: int, sharers: int) -> dict:
    """Start a Ray like `rlhf train`, give the actor its share of the cores as the
    controller does (`sharers` busy ranks on the node), time actor.update."""
    import ray

    common.ray_like_pipeline()
    try:
        actor = start_actor(cfg)
        threads = actor.run_all("share_cores", sharers)[0]
        old = actor.run_split("compute_logprobs", batch, temperature=cfg.rollout.temperature)
        batch = batch.replace(old_logprobs=old, ref_logprobs=old)
        seconds = []
        for _ in range(repeats + 1):  # the first update warms up
            t0 = time.perf_counter()
            actor.gather(actor.call_split("update", batch, temperature=cfg.rollout.temperature))
            seconds.append(time.perf_counter() - t0)
        actor.kill()
    finally:
        ray.shutdown()
    return {"seconds": seconds[1:], "warmup_seconds": seconds[0], "torch_threads": threads,
            "old_logprobs": old}


def time_bare(cfg, batch, repeats: int) -> dict:
    """bare_deepspeed.py in a fresh process, with our actor's DeepSpeed config."""
    from workers.trainer_base import deepspeed_config, free_port

    ds_config = deepspeed_config(cfg.actor, micro_batch_size=cfg.train.micro_batch_size,
                                 grad_accum=cfg.train.mini_batch_size // cfg.train.micro_batch_size,
                                 world_size=1, bf16=_trainer_bf16(cfg))
    with tempfile.TemporaryDirectory(prefix="bench-train-") as work:
        torch.save({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                    "position_ids": batch.position_ids(), "response_mask": batch.response_mask,
                    "old_logprobs": batch.old_logprobs, "advantages": batch.advantages}, f"{work}/batch.pt")
        json.dump({"model_path": cfg.model.policy, "ds_config": ds_config, "repeats": repeats},
                  open(f"{work}/setup.json", "w"))
        proc = subprocess.run([sys.executable, str(HERE / "bare_deepspeed.py"), work], capture_output=True, text=True,
                              env={**os.environ, "MASTER_PORT": str(free_port())})
    if proc.returncode:
        raise RuntimeError(f"bare DeepSpeed loop failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _trainer_bf16(cfg) -> bool:
    from workers import device as dev

    return dev.trainer_dtype(cfg.model.dtype, dev.detect()) == torch.bfloat16


def run(args) -> dict:
    cfg = recipe_config(args)
    params = common.model_params(cfg.model.policy)
    roof = common.matmul_flops()
    t0 = time.perf_counter()
    batch = sample_batch(cfg.model.policy, args.sequences, args.n, args.response_len)
    print(f"[bench] sampled the batch in {time.perf_counter() - t0:.1f}s", flush=True)
    trained_tokens = int(batch.attention_mask.sum())
    sides = {}
    ours = time_ours(cfg, batch, args.repeats, sharers=1)
    batch = batch.replace(old_logprobs=ours.pop("old_logprobs"))
    sides["ours"] = ours
    one_thread = time_ours(cfg, batch, args.repeats, sharers=os.cpu_count())
    one_thread.pop("old_logprobs")
    sides["ours, one thread"] = one_thread
    sides["bare DeepSpeed"] = time_bare(cfg, batch, args.repeats)
    for name, side in sides.items():
        side["tokens_per_s"] = trained_tokens / statistics.median(side["seconds"])
        side["model_flops_fraction"] = 6 * params * side["tokens_per_s"] / roof
        print(f"[bench] train {name}: {side['seconds']} s -> {side['tokens_per_s']:,.0f} tok/s", flush=True)
    bare = sides["bare DeepSpeed"]["tokens_per_s"]
    return {"model": {"path": cfg.model.policy, "params": params, "arch": "Qwen2ForCausalLM"},
            "settings": {"sequences": args.sequences, "n": args.n, "response_len": args.response_len,
                         "prompt_len": batch.prompt_len, "trained_tokens": trained_tokens,
                         "response_tokens": int(batch.response_mask.sum()), "micro_batch": args.micro_batch,
                         "zero_stage": cfg.actor.zero_stage, "bf16": _trainer_bf16(cfg),
                         "actor_num_cpus": cfg.actor.num_cpus, "loss": "ours: grpo_tiny (clip + k3 KL); bare: IS-weighted PG"},
            "bf16_matmul_flops": roof, "sides": sides,
            "ratio_ours_to_bare": sides["ours"]["tokens_per_s"] / bare,
            "ratio_ours_one_thread_to_bare": sides["ours, one thread"]["tokens_per_s"] / bare}


def report(result: dict) -> str:
    rows = [[name, s["torch_threads"], statistics.median(s["seconds"]), s["tokens_per_s"],
             f"{100 * s['model_flops_fraction']:.1f}%"] for name, s in result["sides"].items()]
    st = result["settings"]
    return "\n".join([
        f"actor update on {st['sequences']} sequences x ({st['prompt_len']} + {st['response_len']}) tokens, "
        f"ZeRO-{st['zero_stage']}, bf16={st['bf16']}, micro-batch {st['micro_batch']}",
        common.format_table(["training", "torch threads", "s / update", "trained tokens/s", "of bf16 roof"], rows),
        f"ours / bare DeepSpeed: {result['ratio_ours_to_bare']:.2f}; "
        f"with one thread: {result['ratio_ours_one_thread_to_bare']:.2f}"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (GRPO group)")
    parser.add_argument("--response-len", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed updates per side after one warm-up")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()
    result = run(args)
    common.save_result("train", result, args.out_dir)
    print(report(result))


if __name__ == "__main__":
    main()

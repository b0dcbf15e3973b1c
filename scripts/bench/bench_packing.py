"""Actor update (forward + backward + optimizer step) padded vs packed, side by side.

Two workloads of the same prompts, model and response budget:
  long-tail    responses end at EOS with a heavy-tailed length: L = min(budget,
               ceil(8 * Pareto(1.1))) (median ~15 tokens; budget 256: ~2% run to it),
               the shape of reasoning RL, where a few long samples set the padded width;
  fixed-length every response runs to the budget (the other benchmarks' workload).
Response tokens are drawn at random from the non-special vocabulary (an update's
cost depends on the lengths only); advantages are GRPO's of random scores.

Sides, on ONE in-process ActorWorker (ZeRO-2, recipes/grpo_tiny.yaml's loss, the
machine's trainer dtype), alternated per repeat so a shared machine's noise hits
both alike:
  padded   micro-batches of --micro-batch rows padded to the batch's width;
  always   padding-free rows (train.packing=always) in token-budget micro-batches of the
           same token count (micro-batch x width), balanced by length
           (train.max_tokens_per_micro_batch);
  auto     the same, packing only the micro-batches where it does no more work
           (rlhf.packing.packing_pays), the others padded;
  always + torch.compile (--compile): a second worker with train.compile (inductor,
           dynamic shapes); its first update (the compile) is reported apart.
tokens/s counts the real (prompt + response) tokens trained, the same on every side.

    .venv/bin/python scripts/bench/bench_packing.py [--model bench|tiny] [--sequences 32]
        [--response-len 256] [--micro-batch 8] [--repeats 2] [--compile]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
import time
from pathlib import Path

import torch

import common

HIST_EDGES = [8, 16, 32, 64, 128]  # + "< budget" and "= budget"


def response_lengths(workload: str, count: int, budget: int, seed: int) -> list[int]:
    if workload == "fixed-length":
        return [budget] * count
    rng = random.Random(seed)
    return [min(budget, math.ceil(8 * rng.paretovariate(1.1))) for _ in range(count)]


def histogram(lengths: list[int], budget: int) -> dict[str, int]:
    edges = [e for e in HIST_EDGES if e < budget]
    bins, low = {}, 1
    for edge in edges:
        bins[f"{low}-{edge}"] = sum(low <= n <= edge for n in lengths)
        low = edge + 1
    bins[f"{low}-{budget - 1}"] = sum(low <= n < budget for n in lengths)
    bins[f"={budget}"] = sum(n == budget for n in lengths)
    return bins


def make_batch(tok, lengths: list[int], budget: int, n: int, seed: int):
    """Prompts of the kit's arithmetic split, `lengths` random tokens each (the last
    one EOS when the response ends before the budget), GRPO advantages."""
    from rlhf.algorithms import ADV_ESTIMATORS, AdvantageInputs
    from rlhf.generation import build_batch

    specials = {tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}
    vocab = [t for t in range(min(len(tok), tok.vocab_size)) if t not in specials]  # added tokens may lie outside the embedding
    rng = random.Random(seed)
    prompts = [tok.encode(p) for p in common.arithmetic_prompts(len(lengths) // n) for _ in range(n)]
    responses = [[rng.choice(vocab) for _ in range(k - 1)] + [tok.eos_token_id if k < budget else rng.choice(vocab)]
                 for k in lengths]
    size = len(lengths)
    batch = build_batch(prompts, responses, [[0.0] * len(r) for r in responses], torch.arange(size) // n,
                        torch.zeros(size, dtype=torch.long), budget, tok.pad_token_id)
    scores = torch.randn(size, generator=torch.Generator().manual_seed(seed))
    inputs = AdvantageInputs(token_rewards=torch.zeros_like(batch.response_mask), scores=scores,
                             response_mask=batch.response_mask, group_ids=batch.group_ids, values=None,
                             gamma=1.0, lam=1.0, norm_adv_by_std=True)
    advantages, returns = ADV_ESTIMATORS.get("grpo")(inputs)
    return batch.replace(scores=scores, advantages=advantages, returns=returns)


def recipe_config(args, model_path: str):
    from rlhf.config import load_config

    return load_config(common.ROOT / "recipes" / "grpo_tiny.yaml", [
        f"model.policy={model_path}", f"train.mini_batch_size={args.sequences}",
        f"train.micro_batch_size={args.micro_batch}", f"train.prompts_per_step={args.sequences // args.n}",
        f"rollout.n={args.n}", f"rollout.max_new_tokens={args.response_len}"])


def start_actor(cfg, train):
    from workers.actor import ActorWorker

    worker = ActorWorker(cfg.model.policy, cfg.actor, cfg.algorithm, train, seed=cfg.run.seed, dtype=cfg.model.dtype)
    worker.init_single()
    worker.share_cores(1)  # all cores, as the controller gives an actor training alone
    return worker


def side_settings(train, side: str, width: int):
    packed = side != "padded"
    return dataclasses.replace(train, packing=side if packed else "never",
                               max_tokens_per_micro_batch=train.micro_batch_size * width if packed else 0,
                               max_tokens_per_infer_batch=train.micro_batch_size * width if packed else 0)


def time_update(worker, batch, temperature: float) -> float:
    t0 = time.perf_counter()
    worker.update(batch, temperature=temperature)
    return time.perf_counter() - t0


def run_workload(args, cfg, tok, workload: str, compiled) -> dict:
    lengths = response_lengths(workload, args.sequences, args.response_len, args.seed)
    batch = make_batch(tok, lengths, args.response_len, args.n, args.seed)
    width = batch.input_ids.shape[1]
    worker = args.worker
    worker.train_cfg = side_settings(cfg.train, "always", width)
    old = worker.compute_logprobs(batch, temperature=cfg.rollout.temperature)
    batch = batch.replace(old_logprobs=old, ref_logprobs=old)
    sides = ["padded", "always", "auto"]
    seconds: dict[str, list[float]] = {s: [] for s in sides}
    for repeat in range(args.repeats + 1):  # repeat 0 warms up
        for side in sides:
            worker.train_cfg = side_settings(cfg.train, side, width)
            elapsed = time_update(worker, batch, cfg.rollout.temperature)
            if repeat:
                seconds[side].append(elapsed)
            print(f"[bench] {workload} {side}: {elapsed:.2f} s{'' if repeat else ' (warm-up)'}", flush=True)
    result = {"lengths": lengths, "histogram": histogram(lengths, args.response_len),
              "prompt_len": batch.prompt_len, "width": width, "real_tokens": int(batch.attention_mask.sum()),
              "padded_tokens": batch.size * width, "sides": {}}
    if compiled is not None:
        compiled.train_cfg = side_settings(cfg.train, "always", width)
        first = time_update(compiled, batch, cfg.rollout.temperature)
        seconds["always + torch.compile"] = [time_update(compiled, batch, cfg.rollout.temperature)
                                             for _ in range(args.repeats)]
        result["compile_first_update_s"] = first
    for side, times in seconds.items():
        median = statistics.median(times)
        result["sides"][side] = {"seconds": times, "tokens_per_s": result["real_tokens"] / median}
    padded = result["sides"]["padded"]["tokens_per_s"]
    result["ratios_to_padded"] = {s: v["tokens_per_s"] / padded for s, v in result["sides"].items()}
    return result


def report(result: dict) -> str:
    st, out = result["settings"], []
    out.append(f"actor update, {st['model']} ({st['params'] / 1e6:.1f}M params, {st['dtype']}), "
               f"{st['sequences']} sequences, response budget {st['response_len']}, ZeRO-2, one rank, "
               f"{st['torch_threads']} torch threads; CPU: {result['machine']['cpu']} ({result['machine']['cores']} cores)")
    for name, w in result["workloads"].items():
        out.append(f"\n{name}: {w['real_tokens']} real tokens of {w['padded_tokens']} padded "
                   f"({100 * w['real_tokens'] / w['padded_tokens']:.0f}%); response lengths: "
                   + ", ".join(f"{k}: {v}" for k, v in w["histogram"].items()))
        rows = [[side, statistics.median(s["seconds"]), s["tokens_per_s"], f"{w['ratios_to_padded'][side]:.2f}x"]
                for side, s in w["sides"].items()]
        out.append(common.format_table(["side", "s / update", "real tokens/s", "vs padded"], rows))
        if "compile_first_update_s" in w:
            out.append(f"torch.compile: first update (compiling) {w['compile_first_update_s']:.1f} s")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["bench", "tiny"], default="bench")
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--response-len", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="also time a torch.compile'd packed actor")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from rlhf.tiny import resolve

    model_path = common.bench_model_path() if args.model == "bench" else resolve("tiny:policy")
    cfg = recipe_config(args, model_path)
    tok = AutoTokenizer.from_pretrained(model_path)
    args.worker = start_actor(cfg, cfg.train)
    compiled = start_actor(cfg, dataclasses.replace(cfg.train, compile=True)) if args.compile else None
    workloads = {w: run_workload(args, cfg, tok, w, compiled) for w in ("long-tail", "fixed-length")}
    result = {"settings": {"model": args.model, "params": sum(p.numel() for p in args.worker.engine.module.parameters()),
                           "dtype": str(next(args.worker.engine.module.parameters()).dtype),
                           "sequences": args.sequences, "response_len": args.response_len,
                           "micro_batch": args.micro_batch, "torch_threads": torch.get_num_threads()},
              "machine": common.machine_info(), "workloads": workloads}
    common.save_result("packing", result, args.out_dir)
    print(report(result))


if __name__ == "__main__":
    main()

"""Rollout: generation tokens/s of our RolloutWorker vs a bare vLLM engine, and the
weight sync into that engine vs memcpy.

Our side is the pipeline's own path: a `RolloutWorker` Ray actor started by a
`WorkerGroup` with the default `rollout` config (0.5 Ray CPU, bf16, eager), called
through its `generate` verb from this process (results come back through Ray, with
per-token log-probs, as the controller gets them). The bare side is `vllm.LLM` in
this process with the same model, prompts, dtype, memory settings and
`SamplingParams` (n, temperature, max tokens, seeds), minus the log-probs and the
Ray hop. Runs alternate (ours, bare, ours, ...) after one warm-up each, so drift on
the shared machine hits both. Then `bench_weight_sync.measure_sync` pushes the
model's weights into the same engine over shared memory and compares with a memcpy.
Model FLOP/s of generation (~2 x params per token) are divided by the bf16 matmul
roof measured here. Leaves out: several engines, GPU, prefix caching effects.

    .venv/bin/python scripts/bench/bench_rollout.py [--prompts 32] [--n 8] [--max-new-tokens 128]
        [--repeats 2] [--out-dir scripts/bench/results]

~3 minutes on 2 cores (two engine starts, ~10 s per generation run).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import common


def sampling_kwargs(args) -> dict:
    return dict(n=args.n, temperature=1.0, top_p=1.0, top_k=-1, max_new_tokens=args.max_new_tokens)


def start_pipeline_engine(path: str, cfg):
    """The rollout role as the controller starts it (rlhf/roles.py, PPORoles.start)."""
    from workers.group import WorkerGroup
    from workers.rollout import RolloutWorker

    t0 = time.perf_counter()
    group = WorkerGroup(RolloutWorker, 1, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, name="rollout",
                        init_kwargs=dict(model_path=path, cfg=cfg, seed=1), distributed=False)
    return group, time.perf_counter() - t0


def pipeline_generate(group, prompt_ids: list[list[int]], seed: int, sampling: dict) -> tuple[int, float]:
    import ray

    t0 = time.perf_counter()
    out = ray.get(group.actors[0].generate.remote(prompt_ids, seed=seed, **sampling))
    seconds = time.perf_counter() - t0
    return sum(map(len, out["response_ids"])), seconds


def start_bare_engine(path: str, cfg):
    from vllm import LLM

    from workers import device as dev

    t0 = time.perf_counter()
    llm = LLM(model=path, dtype=cfg.dtype, enforce_eager=dev.enforce_eager(cfg.enforce_eager), seed=1, disable_log_stats=True,
              **dev.vllm_memory_kwargs(cfg.memory_fraction, cfg.kv_cache_gib))
    return llm, time.perf_counter() - t0


def bare_generate(llm, prompt_ids: list[list[int]], seed: int, sampling: dict) -> tuple[int, float]:
    from vllm import SamplingParams

    n = sampling["n"]
    params = [SamplingParams(n=n, temperature=sampling["temperature"], top_p=sampling["top_p"],
                             max_tokens=sampling["max_new_tokens"], seed=seed + i * n, detokenize=False)
              for i in range(len(prompt_ids))]
    t0 = time.perf_counter()
    outs = llm.generate([{"prompt_token_ids": p} for p in prompt_ids], params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    return sum(len(c.token_ids) for o in outs for c in o.outputs), seconds


def run(args) -> dict:
    import ray
    from transformers import AutoTokenizer

    from bench_weight_sync import measure_sync
    from rlhf.config.schema import RolloutSection

    path = common.bench_model_path()
    params = common.model_params(path)
    tok = AutoTokenizer.from_pretrained(path)
    prompt_ids = [tok.encode(p) for p in common.arithmetic_prompts(args.prompts)]
    sampling = sampling_kwargs(args)
    from workers import device as dev

    # The engine dtype resolved here ("auto": bf16 only on CPUs with native bf16) so the
    # bare engine and the results name the dtype our engine runs in.
    cfg = RolloutSection(max_new_tokens=args.max_new_tokens, n=args.n, dtype=dev.rollout_dtype("auto"))
    roof = common.matmul_flops()

    common.ray_like_pipeline()
    try:
        group, ours_start = start_pipeline_engine(path, cfg)
        llm, bare_start = start_bare_engine(path, cfg)
        runs = {"ours": [], "bare": []}
        generate = {"ours": lambda s: pipeline_generate(group, prompt_ids, s, sampling),
                    "bare": lambda s: bare_generate(llm, prompt_ids, s, sampling)}
        for i in range(args.repeats + 1):  # run 0 warms up both
            for side in ("ours", "bare"):
                tokens, seconds = generate[side](1000 * i)
                print(f"[bench] rollout {side} run {i}: {tokens} tokens in {seconds:.2f}s "
                      f"= {tokens / seconds:,.0f} tok/s", flush=True)
                if i:
                    runs[side].append({"tokens": tokens, "seconds": seconds})
        del llm  # free the bare engine's cores and memory before the sync test
        sync_rows = measure_sync(group.actors[0], "bench", path, ["shm"], args.repeats + 1, 256, cfg.dtype)
        group.kill()
    finally:
        ray.shutdown()

    result = {"model": {"path": path, "params": params, "arch": "Qwen2ForCausalLM"},
              "settings": {"prompts": args.prompts, **sampling, "sequences": args.prompts * args.n,
                           "dtype": cfg.dtype, "enforce_eager": dev.enforce_eager(cfg.enforce_eager),
                           "rollout_num_cpus": cfg.num_cpus},
              "bf16_matmul_flops": roof, "engine_start_seconds": {"ours": ours_start, "bare": bare_start},
              "runs": runs, "weight_sync": sync_rows}
    for side, rs in runs.items():
        tps = statistics.median(r["tokens"] / r["seconds"] for r in rs)
        result[f"{side}_tokens_per_s"] = tps
        result[f"{side}_model_flops_fraction"] = 2 * params * tps / roof
    result["ratio_ours_to_bare"] = result["ours_tokens_per_s"] / result["bare_tokens_per_s"]
    return result


def report(result: dict) -> str:
    s = result["settings"]
    rows = [[side, f"{s['sequences']} x {s['max_new_tokens']}", result[f"{side}_tokens_per_s"],
             f"{100 * result[f'{side}_model_flops_fraction']:.1f}%", result["engine_start_seconds"][side]]
            for side in ("ours", "bare")]
    sync = result["weight_sync"][0]
    return "\n".join([
        common.format_table(["rollout", "sequences x tokens", "tokens/s", "of bf16 roof", "engine start s"], rows),
        f"ours / bare vLLM: {result['ratio_ours_to_bare']:.2f} (target >= 0.90)",
        f"weight sync ({sync['transport']}, {sync['bytes'] / 1e6:.1f} MB): {sync['seconds']:.3f}s = "
        f"{sync['GBps']:.2f} GB/s; floor (memcpy + vLLM reload) {sync['floor_seconds']:.3f}s, "
        f"x{sync['ratio_to_floor']:.2f}"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side after one warm-up")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    args = parser.parse_args()
    result = run(args)
    common.save_result("rollout", result, args.out_dir)
    print(report(result))


if __name__ == "__main__":
    main()

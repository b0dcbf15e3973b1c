"""Benchmark the trainer -> vLLM weight sync, per transport and model size.

For the tiny policy (~1M params) and a ~28M-param Llama of the same tokenizer (random
init), starts one RolloutWorker (vLLM engine in a Ray actor), sends the weights from
this process with `WeightSender` over each transport, and prints bytes, seconds, GB/s
and the ratio to a floor measured in the same run: one memcpy of the bytes (here) +
vLLM's own in-place `reload_weights` of tensors already in the worker's memory.
Leaves out: multi-node, several rollout workers, GPU transports (no GPU here).

    .venv/bin/python scripts/bench/bench_weight_sync.py [--out runs/bench_weight_sync.json]
        [--repeats 3] [--bucket-mb 256] [--sizes tiny,28m]

Takes ~3-4 minutes on 2 cores (two engine starts dominate).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import torch


def build_28m(out_dir: str) -> str:
    """~28M-param Llama (hidden 512, 8 layers) with the tiny tokenizer, random init."""
    from transformers import AutoTokenizer

    from rlhf.tiny import resolve
    from rlhf.tiny.models import TinyArch, build_policy, count_parameters, llama_config

    tok = AutoTokenizer.from_pretrained(resolve("tiny:policy"))
    arch = TinyArch(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                    num_attention_heads=8, num_key_value_heads=8)
    model = build_policy(llama_config(len(tok), tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, arch), seed=0)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    print(f"built 28m model: {count_parameters(model) / 1e6:.1f}M params at {out_dir}")
    return out_dir


def memcpy_seconds(nbytes: int, repeats: int) -> float:
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_model(label: str, path: str, transports: list[str], repeats: int, bucket_mb: int) -> list[dict]:
    import ray

    from rlhf.config.schema import RolloutSection
    from workers.rollout import RolloutWorker

    from workers import device as dev

    cfg = RolloutSection(memory_fraction=0.1, kv_cache_gib=1.0, dtype=dev.rollout_dtype("auto"))
    t0 = time.perf_counter()
    worker = ray.remote(RolloutWorker).options(num_cpus=0.5).remote(path, cfg)
    ray.get(worker.ready.remote())
    start = time.perf_counter() - t0
    rows = measure_sync(worker, label, path, transports, repeats, bucket_mb, cfg.dtype)
    for row in rows:
        row["engine_start_seconds"] = start
    ray.kill(worker)
    return rows


def measure_sync(worker, label: str, path: str, transports: list[str], repeats: int, bucket_mb: int,
                 dtype: str) -> list[dict]:
    """Sync the weights at `path` from this process into a running RolloutWorker
    (`repeats` timed runs per transport after one warm-up) and compare with the floor."""
    import ray
    from transformers import AutoModelForCausalLM

    from workers.weight_sync import WeightSender

    state = list(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict().items())
    reload_s = ray.get(worker.benchmark_reload.remote(path, repeats))
    rows = []
    version = ray.get(worker.weight_version.remote())  # versions must increase
    for name in transports:
        sender = WeightSender(name, bucket_bytes=bucket_mb << 20, dtype=dtype)
        sender.connect([worker])
        runs = []
        for i in range(repeats + 1):  # the first run warms up (page faults, group buffers)
            version += 1
            stats = sender.send(iter(state), version)
            if i:
                runs.append(stats)
        sender.close()
        best = min(runs, key=lambda s: s["sync/seconds"])
        nbytes = best["sync/bytes"]
        floor = memcpy_seconds(nbytes, repeats) + reload_s
        rows.append({"model": label, "transport": name, "bytes": nbytes, "buckets": best["sync/buckets"],
                     "seconds": best["sync/seconds"], "GBps": best["sync/GBps"], "floor_seconds": floor,
                     "reload_seconds": reload_s, "ratio_to_floor": best["sync/seconds"] / floor})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_weight_sync.json", help="JSON results file")
    parser.add_argument("--repeats", type=int, default=3, help="timed syncs per transport (after one warm-up)")
    parser.add_argument("--bucket-mb", type=int, default=256, help="bucket size in MB")
    parser.add_argument("--sizes", default="tiny,28m", help="comma list of: tiny, 28m")
    parser.add_argument("--transports", default="shm,process_group")
    args = parser.parse_args()

    import ray

    from rlhf.tiny import resolve
    from workers.device import setup_process_env

    setup_process_env()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    tmp = tempfile.mkdtemp(prefix="bench-wsync-")
    rows = []
    try:
        models = {"tiny": lambda: resolve("tiny:policy"), "28m": lambda: build_28m(os.path.join(tmp, "m28"))}
        for label in args.sizes.split(","):
            rows += bench_model(label, models[label](), args.transports.split(","), args.repeats, args.bucket_mb)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        ray.shutdown()

    print(f"\n{'model':6} {'transport':14} {'MB':>8} {'bkts':>4} {'sync s':>8} {'GB/s':>6} {'floor s':>8} {'x floor':>7}")
    for r in rows:
        print(f"{r['model']:6} {r['transport']:14} {r['bytes'] / 1e6:8.2f} {r['buckets']:4d} {r['seconds']:8.4f} "
              f"{r['GBps']:6.2f} {r['floor_seconds']:8.4f} {r['ratio_to_floor']:7.2f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()

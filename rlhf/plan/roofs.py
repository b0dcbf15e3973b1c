"""Compute and memory-bandwidth roofs the phase times are predicted at.

CPU: measured on the spot, a short torch matmul at the model's own layer shape
([tokens, hidden] x [hidden, intermediate]) in the dtype the run computes in, on all the
cores the phase would get, and a large copy for the bandwidth. bf16 without native support
(AVX2-only CPUs) runs through emulated kernels, hundreds of times slower than fp32
(../shared/ENVIRONMENT.md): measuring it is the point.
GPU: the vendor's published dense peak, times an assumed achieved fraction (`mfu`).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

# Dense tensor-core peak (TFLOP/s, bf16; V100/T4: fp16) and HBM bandwidth (TB/s) from the
# vendors' data sheets (SXM parts where there are two).
GPU_PEAKS = {
    "A100": (312.0, 2.0), "A100-40GB": (312.0, 1.555), "H100": (989.0, 3.35), "H100-PCIE": (756.0, 2.0),
    "H200": (989.0, 4.8), "B200": (2250.0, 8.0), "L40S": (362.0, 0.864), "L4": (121.0, 0.3),
    "A10G": (70.0, 0.6), "A10": (125.0, 0.6), "V100": (125.0, 0.9), "T4": (65.0, 0.32),
    "RTX4090": (165.0, 1.0), "MI300X": (1307.0, 5.3),
}


@dataclass(frozen=True)
class Roof:
    """Achievable FLOP/s of training/scoring matmuls, of decode-sized matmuls, and memory
    bytes/s; `source` says where the numbers come from. `rates`: on CPU, FLOP/s of the
    model's own passes measured at a thread count, {(kind, threads): FLOP/s} with kind
    "infer" (no-grad forward), "train" (forward + backward) or "decode" (one token step)."""
    flops: float
    decode_flops: float
    bandwidth: float
    source: str
    threads: int = 0
    rates: dict = field(default_factory=dict)

    def rate(self, kind: str, threads: int) -> float:
        """FLOP/s of a pass of `kind` on `threads` threads: measured, else the matmul roof
        scaled by the share of threads."""
        if (kind, threads) in self.rates:
            return self.rates[(kind, threads)]
        base = self.decode_flops if kind == "decode" else self.flops
        return base * threads / max(1, self.threads) if self.threads else base


def gpu_roof(kind: str | None, tflops: float | None, mfu: float) -> Roof:
    """A GPU's roof: --gpu-tflops, else the table's peak for --gpu-kind; times `mfu`."""
    if tflops is None:
        if kind is None:
            raise ValueError("a GPU plan needs --gpu-kind (one of " + ", ".join(GPU_PEAKS) + ") or --gpu-tflops")
        key = next((k for k in GPU_PEAKS if k.lower() == kind.lower()), None)
        if key is None:
            raise ValueError(f"--gpu-kind {kind!r} is not in the table ({', '.join(GPU_PEAKS)}); give --gpu-tflops")
        tflops, tbps = GPU_PEAKS[key]
        source = f"{key} data sheet: {tflops:g} TFLOP/s dense, {tbps:g} TB/s, at {mfu:.0%} achieved"
    else:
        tbps = GPU_PEAKS.get(kind or "", (0.0, 2.0))[1]
        source = f"--gpu-tflops {tflops:g}, {tbps:g} TB/s, at {mfu:.0%} achieved"
    achieved = tflops * 1e12 * mfu
    return Roof(achieved, achieved, tbps * 1e12 * mfu, source)


def _matmul_rate(m: int, k: int, n: int, dtype, budget_s: float) -> float:
    """FLOP/s of an [m, k] x [k, n] matmul, best of repeats within ~budget_s."""
    import torch

    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    return 2.0 * m * k * n / _median_time(lambda: a @ b, budget_s)


def _median_time(fn, budget_s: float, at_least: int = 3) -> float:
    """Median seconds of fn() after a warm-up, repeated for ~budget_s (at least 3 times;
    2 when one call already takes the budget).
    The median, not the best: on a shared machine the run meets the typical contention."""
    fn()  # warm-up: kernel selection, first touch of the outputs
    times: list[float] = []
    while sum(times) < budget_s or len(times) < (2 if times and times[0] > budget_s else at_least):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _copy_rate(nbytes: int = 256 << 20) -> float:
    """Bytes/s of a large tensor copy (read + write counted once each)."""
    import torch

    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(3))
    return 2.0 * nbytes / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_roof(hidden: int, intermediate: int, tokens: int, decode_rows: int, train_dtype: str,
             decode_dtype: str, budget_s: float = 0.4) -> Roof:
    """Measured on this machine with torch on all its cores (what a role running alone
    gets): the trainers' matmul in their dtype at a micro-batch's tokens, the engine's in
    its dtype at one decode step's rows (the sequences in flight)."""
    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    threads = torch.get_num_threads()
    torch.set_num_threads(cpu_cores())
    try:
        flops = _matmul_rate(min(max(tokens, 16), 4096), hidden, intermediate, dtypes[train_dtype], budget_s)
        decode = _matmul_rate(max(decode_rows, 1), hidden, intermediate, dtypes[decode_dtype], budget_s / 2)
        bandwidth = _copy_rate()
    finally:
        torch.set_num_threads(threads)
    source = (f"measured here: {train_dtype} matmul [{tokens}x{hidden}]x[{hidden}x{intermediate}] "
              f"{flops / 1e9:.1f} GFLOP/s, {decode_dtype} decode-sized [{decode_rows}x{hidden}] {decode / 1e9:.1f} "
              f"GFLOP/s, copy {bandwidth / 1e9:.1f} GB/s, {cpu_cores()} threads")
    return Roof(flops, decode, bandwidth, source, cpu_cores())


BENCH_TOKENS = 2048  # tokens of a benchmarked forward/backward at most (keeps the measurement short)
# Models up to this size are benchmarked whole; larger ones as a 2-layer slice (rates
# carry over: FLOPs scale with layers, and so does the time).
WHOLE_MODEL_PARAMS = 60_000_000


def model_pass_rates(config: dict, shape, dtype_name: str, rows: int, width: int, decode_rows: int,
                     prompt: int, decode_context: int, wanted: set, budget_s: float = 0.6) -> dict:
    """{(kind, threads): FLOP/s} of the model's own passes, random weights, built from its
    config (no checkpoint read): kind "infer" = no-grad forward of rows x width tokens and
    the log-softmax of its logits, "train" = the same with gradients and its backward,
    "prefill" = an engine's prefill of decode_rows prompts (logits of the last token only),
    "decode" = one token step of decode_rows sequences at decode_context cached tokens."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlhf.plan.model import from_config

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    layers = shape.layers if shape.params <= WHOLE_MODEL_PARAMS else min(2, shape.layers)
    cfg = dict(config, num_hidden_layers=layers, use_cache=True)
    cfg.pop("layer_types", None)
    hf_config = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=dtypes[dtype_name], attn_implementation="sdpa")
    bench = from_config(cfg)
    rows = max(1, min(rows, BENCH_TOKENS // width))  # rates hold for any rows once matmuls are this big
    ids = torch.randint(3, min(bench.vocab, 100), (rows, width))
    # as the trainers' batches: left-padded prompts, so an attention mask (not the causal fast path)
    mask = torch.ones(rows, width, dtype=torch.long)
    mask[::2, : max(1, width // 8)] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    context = torch.randint(3, min(bench.vocab, 100), (decode_rows, decode_context))
    prompts = context[:, :prompt]
    head = 2 * bench.vocab * bench.hidden  # one token's LM head
    passes = {
        "infer": (lambda: _infer(model, batch), rows * width * bench.forward_flops(width / 2)),
        "train": (lambda: _train(model, batch), 3 * rows * width * bench.forward_flops(width / 2)),
        "prefill": (lambda: _prefill(model, prompts),
                    decode_rows * (prompt * bench.forward_flops(prompt / 2, lm_head=False) + head)),
        "decode": (_decoder(model, context), decode_rows * bench.forward_flops(decode_context)),
    }
    threads = torch.get_num_threads()
    out = {}
    try:
        for kind, count in sorted(wanted):
            torch.set_num_threads(count)
            fn, flops = passes[kind]
            out[(kind, count)] = flops / _median_time(fn, budget_s)
    finally:
        torch.set_num_threads(threads)
    return out


def _infer(model, batch):
    import torch

    with torch.no_grad():
        torch.log_softmax(model(**batch).logits.float(), -1)


def _train(model, batch):
    import torch

    torch.log_softmax(model(**batch).logits.float(), -1).mean().backward()


def _prefill(model, prompts):
    import torch

    with torch.no_grad():
        model(prompts, use_cache=True, logits_to_keep=1)


def _decoder(model, prompt):
    """One decode step on a cache filled once with the prompt (cut back after each step)."""
    import torch

    with torch.no_grad():
        cache = model(prompt, use_cache=True).past_key_values
    step = prompt[:, -1:]

    def decode():
        with torch.no_grad():
            model(step, past_key_values=cache, use_cache=True)
        cache.crop(-1)  # drop the step's token again
    return decode


def at_least_single_thread(rates: dict) -> dict:
    """A pass on t threads taken to run at least as fast as on one. torch's OpenMP pool
    spin-waits at every op's barrier: on an oversubscribed machine (other jobs on the
    cores) this benchmark on 2 threads ran up to 15x slower than on 1 (tiny model, load
    ~20 on 2 cores), which the run's roles were not (vLLM binds its threads)."""
    return {(kind, t): max(rate, rates.get((kind, 1), 0.0)) for (kind, t), rate in rates.items()}


def with_rates(roof: Roof, rates: dict, note: str) -> Roof:
    return replace(roof, rates={**roof.rates, **rates}, source=roof.source + "; " + note)

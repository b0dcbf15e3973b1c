"""Trainer -> rollout weight sync: bucketing, the sender and its transports.

After each actor update the trainer's rank 0 holds full HF-named tensors (gathered
from ZeRO shards by the caller). `WeightSender.send` casts them to the engines' dtype,
packs them into flat byte buckets and moves each bucket to every rollout worker:

    shm            same node, a CPU side: the bucket is written once into a /dev/shm file,
                   the vLLM worker maps the file and loads views of it (zero-copy).
    process_group  CPU nodes: broadcast over a dedicated gloo group between the sender
                   (rank 0) and the vLLM worker processes (ranks 1..N).

Between GPUs (cuda_ipc, NCCL) the sync runs on vLLM's own weight-transfer engines:
workers/vllm_transfer.py. `choose_sync` picks the transport for both.

Only bucket metadata (names, shapes, dtypes, offsets) travels by Ray call: one call per
bucket per rollout worker, plus one `finish_weight_update` per worker per sync. The
receiving side is `workers.vllm_extension.WeightReceiverExtension`.
"""
from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from workers import device as dev

_ALIGN = 64  # byte alignment of every tensor inside a bucket (any dtype view is aligned)

# (name, shape, dtype name, byte offset, numel): the wire form of one tensor in a bucket.
TensorMeta = tuple[str, list[int], str, int, int]


def dtype_of(name: str | torch.dtype) -> torch.dtype:
    """torch dtype from "bfloat16" / "bf16" / "float32" / "fp32" / torch.bfloat16."""
    if isinstance(name, torch.dtype):
        return name
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    return getattr(torch, aliases.get(name, name))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def pack_buckets(
    named_tensors: Iterable[tuple[str, Tensor]],
    bucket_bytes: int,
    dtype: torch.dtype | str,
    alloc: Callable[[int, int], Tensor] | None = None,
) -> Iterator[tuple[Tensor, list[TensorMeta]]]:
    """Pack tensors, cast to `dtype`, into flat uint8 buckets of at most `bucket_bytes`.

    Streams: each tensor is copied into the current bucket as soon as it arrives (a
    ZeRO-3 gathered parameter is only valid inside its context), and a bucket is
    yielded when the next tensor does not fit. A tensor larger than `bucket_bytes`
    gets a bucket of its own. `alloc(index, nbytes)` returns the uint8 buffer of
    bucket `index` (default: fresh memory); the shm transport passes file mappings so
    packing writes straight into shared memory. The yielded `flat` is the used prefix.
    Consume each bucket before asking for the next: `alloc` may reuse buffers.

    Yields: (flat: uint8 (nbytes,), metas: [(name, shape, dtype, offset, numel), ...]).
    """
    dtype = dtype_of(dtype)
    alloc = alloc or (lambda index, nbytes: torch.empty(nbytes, dtype=torch.uint8))
    itemsize = torch.empty((), dtype=dtype).element_size()
    buf, metas, used, index = None, [], 0, 0
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * itemsize
        if buf is not None and used + nbytes > buf.numel():
            yield buf[:used], metas
            buf, metas, used, index = None, [], 0, index + 1
        if buf is None:
            buf = alloc(index, max(bucket_bytes, _aligned(nbytes)))
        view = buf[used : used + nbytes].view(dtype).view(tensor.shape)
        view.copy_(tensor.detach())  # casts to the rollout dtype
        metas.append((name, list(tensor.shape), dtype_name(dtype), used, tensor.numel()))
        used = _aligned(used + nbytes)
    if buf is not None:
        yield buf[:used], metas


def unpack_bucket(flat: Tensor, metas: Iterable[TensorMeta]) -> list[tuple[str, Tensor]]:
    """Views of `flat` (uint8) for each (name, shape, dtype, offset, numel): no copy."""
    out = []
    for name, shape, dtype, offset, numel in metas:
        dt = dtype_of(dtype)
        nbytes = numel * torch.empty((), dtype=dt).element_size()
        out.append((name, flat[offset : offset + nbytes].view(dt).view(*shape)))
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ transports
# A transport moves one bucket's bytes. Sender half: `setup` once, `stage` each bucket
# before the Ray calls go out (returns extra meta for the receivers), `push` after.

SHM_PREFIX = "rlhf-wsync-"  # + <sender pid>-<id>-<bucket index>


def remove_stale_shm_files(folder: str) -> list[str]:
    """Delete the bucket files of senders that no longer run (a killed trainer never
    closes its transport). Returns the removed paths."""
    import glob

    removed = []
    for path in glob.glob(os.path.join(folder, SHM_PREFIX + "*")):
        pid = os.path.basename(path)[len(SHM_PREFIX):].split("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            try:
                os.unlink(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class _ShmTransport:
    """One /dev/shm file per bucket index, reused across syncs (tmpfs pages stay
    allocated: the first sync pays the page faults, later ones only the memcpy).
    Receivers keep views of a file until `finish_weight_update`, so a sync never
    overwrites a file it still reads: files are per bucket, not a ring."""

    def __init__(self):
        remove_stale_shm_files(dev.shared_memory_dir())
        self.prefix = os.path.join(dev.shared_memory_dir(), f"{SHM_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.maps: dict[int, Tensor] = {}  # bucket index -> our mapping of its file

    def spec(self) -> dict:
        return {"transport": "shm"}

    def setup(self, handles, rank_offsets, world_size):
        return []

    def alloc(self, index: int, nbytes: int) -> Tensor:
        mapped = self.maps.get(index)
        if mapped is None or mapped.numel() < nbytes:  # new index, or grow the file
            mapped = torch.from_file(f"{self.prefix}-{index}", shared=True, size=nbytes, dtype=torch.uint8)
            self.maps[index] = mapped
        return mapped

    def stage(self, index: int, flat: Tensor) -> dict:
        return {"path": f"{self.prefix}-{index}"}

    def push(self, flat: Tensor) -> None:
        pass  # the bytes are already in the file

    def end_sync(self):
        pass

    def close(self):
        for index in self.maps:
            try:
                os.unlink(f"{self.prefix}-{index}")
            except FileNotFoundError:
                pass
        self.maps.clear()


class _ProcessGroupTransport:
    """CPU nodes: broadcast from rank 0 over a dedicated gloo group (never the default group)."""

    def __init__(self):
        self.group = None
        self.store = None
        self.buf: Tensor | None = None

    def spec(self) -> dict:
        return {"transport": "process_group"}

    def setup(self, handles, rank_offsets, world_size):
        import ray
        from torch.distributed import PrefixStore, TCPStore

        host = ray.util.get_node_ip_address()
        port = _free_port()
        name = f"rlhf-wsync-{uuid.uuid4().hex[:8]}"
        self.store = TCPStore(host, port, world_size, is_master=True, wait_for_workers=False)
        refs = [
            h.init_weight_receiver.remote({"transport": "process_group", "host": host, "port": port,
                                           "group_name": name, "rank_offset": off, "world_size": world_size})
            for h, off in zip(handles, rank_offsets)
        ]
        # Joining is a rendezvous: the receivers' Ray calls must be in flight first.
        self.group = dev.new_weight_sync_group(PrefixStore(name, self.store), 0, world_size, host)
        return refs

    def alloc(self, index: int, nbytes: int) -> Tensor:
        # One reusable buffer: push (a blocking gloo broadcast) has sent bucket k before k+1 is packed.
        if self.buf is None or self.buf.numel() < nbytes:
            self.buf = dev.comm_buffer(nbytes)
        return self.buf[:nbytes]

    def stage(self, index: int, flat: Tensor) -> dict:
        return {}

    def push(self, flat: Tensor) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self.group.broadcast([flat], opts).wait()

    def end_sync(self):
        pass

    def close(self):
        self.group, self.store, self.buf = None, None, None


TRANSPORTS = {"shm": _ShmTransport, "process_group": _ProcessGroupTransport}
# GPU syncs (cuda_ipc, and process_group between GPUs) go through vLLM's engines: workers/vllm_transfer.py


IN_FLIGHT_BUCKETS = 2  # buckets whose receivers may still be loading while the next is packed


class InFlight:
    """Bounded pipeline of buckets: `add(refs)` the receivers' calls of bucket k, then wait
    (`wait(refs)`) only for buckets older than the newest `depth`, oldest first; the
    sender packs on meanwhile. `drain()` waits for the rest."""

    def __init__(self, depth: int, wait: Callable[[list], object]):
        if depth < 1:
            raise ValueError(f"in-flight depth must be >= 1, got {depth}")
        self.depth, self.wait, self.pending = depth, wait, []

    def add(self, refs: list) -> None:
        self.pending.append(refs)
        while len(self.pending) > self.depth:
            self.wait(self.pending.pop(0))

    def drain(self) -> None:
        while self.pending:
            self.wait(self.pending.pop(0))


@dataclass
class _Receiver:
    handle: object       # Ray actor handle of a RolloutWorker
    rank_offset: int     # process_group rank of its first vLLM worker process
    group: str | None = None  # its concurrency group for the sync's calls (rollout.partial resume)

    def call(self, method: str, *args):
        """`handle.method.remote(*args)`, in the receiver's concurrency group if it has one."""
        bound = getattr(self.handle, method)
        return (bound.options(concurrency_group=self.group) if self.group else bound).remote(*args)


class WeightSender:
    """Pushes full HF-named tensors from the trainer (actor rank 0) to rollout workers.

        sender = WeightSender("auto", bucket_bytes=256 << 20)  # dtype "auto": the engines'
        sender.connect(rollout_handles)            # once
        stats = sender.send(named_tensors, version)  # after every update
    """

    def __init__(self, transport: str = "auto", bucket_bytes: int = 256 << 20, dtype: torch.dtype | str = "auto"):
        if transport not in ("auto", *TRANSPORTS):
            raise ValueError(f"sync.transport: unknown transport {transport!r}; "
                             f"choose auto, {', '.join(TRANSPORTS)}")
        self.requested = transport
        self.transport_name: str | None = None
        self.bucket_bytes = int(bucket_bytes)
        self.requested_dtype = dtype  # "auto": the dtype the engines hold their weights in
        self.dtype: torch.dtype | None = None if dtype == "auto" else dtype_of(dtype)
        self.receivers: list[_Receiver] = []
        self._transport = None

    def connect(self, rollout_handles: list, device: torch.device | None = None,
                senders: list[dev.DeviceReport] | None = None, infos: list[dict] | None = None) -> str:
        """Set the transport up with these RolloutWorker actors; returns its name.
        `device`: where the sent weights live (default: this process's device); `senders`:
        every actor rank's DeviceReport (default: this process's); `infos`: the engines'
        `engine_info` if already fetched."""
        import ray

        self.close()
        infos = infos if infos is not None else ray.get([h.engine_info.remote() for h in rollout_handles])
        self.dtype, name = choose_sync(infos, self.requested, self.requested_dtype, senders, device)
        offsets, world = [], 1
        for info in infos:
            offsets.append(world)
            world += info["num_engine_workers"]
        if name not in TRANSPORTS:
            raise RuntimeError(f"weight sync by {name}: a GPU transport, run by vLLM's engines (workers/vllm_transfer.py)")
        self._transport = TRANSPORTS[name]()
        self.receivers = [_Receiver(h, off, info.get("update_group"))
                          for h, off, info in zip(rollout_handles, offsets, infos)]
        refs = self._transport.setup(rollout_handles, offsets, world)
        if not refs:
            refs = [h.init_weight_receiver.remote(self._transport.spec()) for h in rollout_handles]
        ray.get(refs)
        self.transport_name = name
        return name

    def send(self, named_tensors: Iterable[tuple[str, Tensor]], version: int) -> dict:
        """Send every tensor to every connected rollout worker; they switch to `version`.

        `named_tensors` is any iterator of (hf_name, full tensor), consumed once.
        Returns {"sync/seconds", "sync/bytes", "sync/GBps", "sync/buckets", "sync/tensors"}.
        """
        import ray

        if self._transport is None:
            raise RuntimeError("WeightSender.send before connect()")
        t0 = time.perf_counter()
        nbytes = ntensors = nbuckets = 0
        in_flight = InFlight(IN_FLIGHT_BUCKETS, ray.get)
        for index, (flat, metas) in enumerate(pack_buckets(named_tensors, self.bucket_bytes, self.dtype,
                                                           alloc=self._transport.alloc)):
            meta = {"index": index, "nbytes": flat.numel(), "tensors": metas, **self._transport.stage(index, flat)}
            refs = [r.call("receive_bucket", meta) for r in self.receivers]
            # process_group: returns once the bytes are sent (the buffer is free again);
            # the receivers load bucket k while the next loop packs bucket k+1
            self._transport.push(flat)
            in_flight.add(refs)
            nbytes += flat.numel()
            ntensors += len(metas)
            nbuckets += 1
        in_flight.drain()
        reports = ray.get([r.call("finish_weight_update", version) for r in self.receivers])
        for report in reports:
            if report["tensors"] != ntensors or report["buckets"] != nbuckets:
                raise RuntimeError(f"weight sync v{version}: sent {nbuckets} buckets/{ntensors} tensors, "
                                   f"a rollout worker loaded {report['buckets']}/{report['tensors']}")
        self._transport.end_sync()
        seconds = time.perf_counter() - t0
        return {"sync/seconds": seconds, "sync/bytes": nbytes, "sync/GBps": nbytes / max(seconds, 1e-9) / 1e9,
                "sync/buckets": nbuckets, "sync/tensors": ntensors}

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._transport, self.transport_name, self.receivers = None, None, []

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def choose_sync(infos: list[dict], transport: str, dtype, senders: list[dev.DeviceReport] | None = None,
                device: torch.device | None = None) -> tuple[torch.dtype, str]:
    """(dtype, transport) of a sync to engines reporting `infos` (`RolloutWorker.engine_info`):
    dtype "auto" is the engines' (they must agree); transport "auto" follows the devices
    (`workers.device.choose_transport`) of the `senders` (default: this process on `device`)."""
    if dtype == "auto":
        dtypes = {info["dtype"] for info in infos}
        if len(dtypes) != 1:
            raise RuntimeError(f"weight sync: rollout engines disagree on their dtype: {sorted(dtypes)}")
        dtype = dtypes.pop()
    if transport != "auto":
        return dtype_of(dtype), transport
    if not senders:
        import ray

        here = ray.get_runtime_context().get_node_id()
        senders = [dev.device_report(here, device if device is not None else dev.detect().torch_device())]
    receivers = [dev.DeviceReport(**d) for info in infos for d in info["devices"]]
    return dtype_of(dtype), dev.choose_transport(senders, receivers)


def bucket_count(sizes_bytes: Iterable[int], bucket_bytes: int) -> int:
    """How many buckets `pack_buckets` makes for tensors of these byte sizes (tests, planning)."""
    count, used, cap = 0, 0, 0
    for n in sizes_bytes:
        if count == 0 or used + n > cap:
            count, used, cap = count + 1, 0, max(bucket_bytes, _aligned(n))
        used = _aligned(used + n)
    return count


__all__ = ["TRANSPORTS", "WeightSender", "bucket_count", "dtype_of", "pack_buckets", "unpack_bucket"]

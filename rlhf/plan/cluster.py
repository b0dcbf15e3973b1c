"""The cluster a plan is for: this machine, a running Ray cluster, or a description
(`--gpus 8 --gpu-mem 80 --nodes 2`)."""
from __future__ import annotations

from dataclasses import dataclass

from rlhf.plan.accounting import GiB


@dataclass(frozen=True)
class Cluster:
    nodes: int
    host_mem: float              # bytes per node
    cores: int                   # CPU cores per node
    gpus_per_node: int = 0
    gpu_mem: float = 0.0         # bytes per GPU
    gpu_kind: str | None = None
    source: str = "this machine"

    @property
    def gpu(self) -> bool:
        return self.gpus_per_node > 0

    def describe(self) -> str:
        host = f"{self.nodes} node(s) x {self.cores} cores, {self.host_mem / GiB:.1f} GiB host memory"
        if self.gpu:
            host += f", {self.gpus_per_node} x {self.gpu_kind or 'GPU'} {self.gpu_mem / GiB:.0f} GiB each"
        return f"{host} ({self.source})"


def local_cluster() -> Cluster:
    import psutil

    from rlhf.plan.roofs import cpu_cores

    return Cluster(nodes=1, host_mem=float(psutil.virtual_memory().total), cores=cpu_cores())


def described_cluster(gpus: int, gpu_mem_gib: float | None, nodes: int, host_mem_gib: float | None,
                      gpu_kind: str | None, cores: int | None) -> Cluster:
    """--gpus N (per node) --gpu-mem GiB --nodes M [--host-mem GiB --cores C]."""
    if gpus < 0 or nodes < 1:
        raise ValueError(f"--gpus must be >= 0 and --nodes >= 1 (got --gpus {gpus}, --nodes {nodes})")
    if gpus and not (gpu_mem_gib and gpu_mem_gib > 0):
        raise ValueError("--gpus needs --gpu-mem GiB (memory of one GPU), e.g. --gpu-mem 80")
    if host_mem_gib is not None and host_mem_gib <= 0:
        raise ValueError(f"--host-mem must be > 0 GiB, got {host_mem_gib}")
    host = (host_mem_gib if host_mem_gib is not None else max(64.0, 2.0 * gpus * (gpu_mem_gib or 0))) * GiB
    return Cluster(nodes=nodes, host_mem=host, cores=cores or max(8, 8 * gpus), gpus_per_node=gpus,
                   gpu_mem=(gpu_mem_gib or 0) * GiB, gpu_kind=gpu_kind,
                   source="described" + ("" if host_mem_gib else "; host memory assumed, give --host-mem"))


def ray_cluster(address: str, gpu_mem_gib: float | None, gpu_kind: str | None) -> Cluster:
    """The alive nodes of the Ray cluster at `address` (joined read-only, nothing started).
    Ray does not report GPU memory: GPU clusters need --gpu-mem."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    finally:
        ray.shutdown()
    if not nodes:
        raise ValueError(f"the Ray cluster at {address} has no alive node")
    gpus = int(max(n.get("GPU", 0) for n in nodes))
    if gpus and not gpu_mem_gib:
        raise ValueError(f"the Ray cluster at {address} has GPUs; give --gpu-mem GiB (Ray does not report it)")
    kinds = [k.split(":", 1)[1] for n in nodes for k in n if k.startswith("accelerator_type:")]
    return Cluster(nodes=len(nodes), host_mem=min(n.get("memory", 0) for n in nodes),
                   cores=int(min(n.get("CPU", 1) for n in nodes)), gpus_per_node=gpus,
                   gpu_mem=(gpu_mem_gib or 0) * GiB, gpu_kind=gpu_kind or (kinds[0] if kinds else None),
                   source=f"Ray cluster at {address}")

"""N Ray actors of one role forming their own torch.distributed world.

    group = WorkerGroup(ActorWorker, 2, num_cpus=0.5, num_gpus=0, name="actor",
                        init_kwargs=dict(model_path=..., trainer_cfg=..., ...))
    logprobs = group.gather_cat(group.call_split("compute_logprobs", batch, temperature=1.0))
    metrics = group.gather(group.call_all("update", batch_part, ...))[0]

Start-up is two-phase so that the world can be wired before any heavy work: the
actors are created (constructors only store their arguments), rank 0 reports its
node IP and a free port there, then every rank runs `init_process`, which joins the
world (gloo on CPU, NCCL on GPU: `workers.device`) and builds the model. A role class
follows that protocol by deriving from `workers.trainer_base.RankWorker`.

Errors never hang the caller: `gather` waits on all ranks at once and raises
`WorkerError` naming role, rank and method as soon as ANY rank fails or dies, even
while its peers still block in a collective. Such a group is broken: `kill()` it.
"""
from __future__ import annotations

import time
from typing import Any

import ray
import torch
from ray.exceptions import GetTimeoutError, RayError, RayTaskError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlhf.batch import Batch, cat_rows
from rlhf.errors import RunError
from rlhf.partition import equal_count_partition
from workers import device as dev


class WorkerError(RunError):
    """A rank of a worker group failed, died or timed out. `died`: its process is gone
    (killed, out of memory, node lost); `hung`: a call outlived its timeout. Restarting
    the roles may help in both cases (`restartable`), not when a verb raised."""

    def __init__(self, message: str, died: bool = False, hung: bool = False):
        super().__init__(message)
        self.died, self.hung = died, hung

    @property
    def restartable(self) -> bool:
        return self.died or self.hung


class RankRefs(list):
    """The per-rank ObjectRefs of one call (a plain list for `ray.get`), remembering the
    method and, for a balanced split, the batch row of each rank's rows in rank order."""

    def __init__(self, refs, method: str, order: torch.Tensor | None = None):
        super().__init__(refs)
        self.method, self.order = method, order


class WorkerGroup:
    def __init__(
        self,
        role_cls: type,
        num_workers: int,
        *,
        num_cpus: float,
        num_gpus: float = 0.0,
        placement_group=None,
        bundle_indices: list[int] | None = None,
        init_kwargs: dict | None = None,
        name: str | None = None,
        init_timeout: float | None = 600.0,
        distributed: bool = True,
        wait: bool = True,
    ):
        """`distributed=False` for roles that need no torch.distributed world of their
        own (the vLLM rollout engines): their constructor does all the set-up.
        `wait=False` returns once the ranks are loading; `wait_ready()` then waits for
        them (so several roles load at once)."""
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if bundle_indices is not None and len(bundle_indices) != num_workers:
            raise ValueError(f"{len(bundle_indices)} bundle indices for {num_workers} workers")
        self.role = name or role_cls.__name__
        self.world_size = num_workers
        self.call_timeout_s: float | None = None  # gather's default timeout: a longer call counts as hung
        self.balance_rows = False  # call_split: deal rows by real tokens (packed PPO roles) instead of chunks
        options = getattr(role_cls, "RAY_OPTIONS", None)  # e.g. concurrency groups
        remote_cls = ray.remote(**options)(role_cls) if options else ray.remote(role_cls)
        self.actors = []
        for rank in range(num_workers):
            options: dict[str, Any] = dict(dev.ray_resources(num_cpus, num_gpus), max_restarts=0)
            if placement_group is not None:
                options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group,
                    placement_group_bundle_index=bundle_indices[rank] if bundle_indices else rank,
                )
            self.actors.append(remote_cls.options(**options).remote(**(init_kwargs or {})))

        self.distributed, self.init_timeout = distributed, init_timeout
        self._loading: RankRefs | None = None
        self.ready = False  # every rank has loaded
        if wait:
            self.wait_ready()

    def start_loading(self) -> None:
        """Let every rank load: rollout engines already do in their constructor; trainer
        ranks wire their world first (rank 0's node and a free port there), then load."""
        if self._loading is not None:
            return
        if not self.distributed:
            self._loading = self.call_all("ready")
            return
        master_addr, master_port = self.gather(RankRefs([self.actors[0].master_address.remote()],
                                                        "master_address"), timeout=self.init_timeout)[0]
        node_ips = self.gather(self.call_all("node_ip"), timeout=self.init_timeout)
        self._loading = RankRefs([
            actor.init_process.remote(rank, self.world_size, node_ips[:rank].count(node_ips[rank]),
                                      master_addr, master_port)
            for rank, actor in enumerate(self.actors)
        ], "init_process")

    def wait_ready(self) -> None:
        """Block until every rank has loaded; a failed group is killed and raises."""
        if self.ready:
            return
        try:
            self.start_loading()
            self.gather(self._loading, timeout=self.init_timeout)
        except WorkerError:
            self.kill()
            raise
        self.ready = True

    # ---------------------------------------------------------------- calls
    def call_all(self, method: str, *args, **kwargs) -> RankRefs:
        """Call `method` with the same arguments on every rank; one ref per rank."""
        return RankRefs([getattr(a, method).remote(*args, **kwargs) for a in self.actors], method)

    def call_split(self, method: str, batch: Batch, **kwargs) -> RankRefs:
        """Call `method(part, **kwargs)` with rank r getting the r-th of `world_size`
        equal parts of `batch` (its size must divide evenly): contiguous chunks, or with
        `balance_rows` rows dealt so every rank holds about as many real tokens (packed
        forwards cost their tokens, and the ranks wait for the slowest at each collective).
        `gather_cat` / `rows_in_order` put per-row results back in batch order."""
        if not (self.balance_rows and self.world_size > 1):
            chunks = batch.chunks(self.world_size)
            return RankRefs([getattr(a, method).remote(c, **kwargs) for a, c in zip(self.actors, chunks)], method)
        parts = equal_count_partition(batch.attention_mask.sum(-1).tolist(), self.world_size)
        refs = [getattr(a, method).remote(batch.index(torch.tensor(p)), **kwargs) for a, p in zip(self.actors, parts)]
        return RankRefs(refs, method, order=torch.tensor([i for p in parts for i in p]))

    def gather(self, refs: list, timeout: float | None = None) -> list:
        """Results of per-rank refs, in rank order.

        Waits on all ranks together and raises `WorkerError` at the first failure
        (task error, dead actor) or after `timeout` seconds (default `call_timeout_s`),
        without waiting for the other ranks, which may be stuck in a collective with the
        failed one.
        """
        timeout = self.call_timeout_s if timeout is None else timeout
        method = getattr(refs, "method", "?")
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        results: dict[int, Any] = {}
        pending = list(refs)
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, pending = ray.wait(pending, num_returns=1, timeout=remaining)
            if not ready:
                ranks = sorted(rank_of[r] for r in pending)
                raise WorkerError(f"{self.role} ranks {ranks} timed out after {timeout:g}s in {method} "
                                  f"(hung?)", hung=True)
            for ref in ready:
                rank = rank_of[ref]
                try:
                    results[rank] = ray.get(ref)
                except RayTaskError as err:
                    cause = err.cause if getattr(err, "cause", None) is not None else err
                    raise WorkerError(f"{self.role} rank {rank} failed in {method}: "
                                      f"{type(cause).__name__}: {cause}") from err
                except (RayError, GetTimeoutError) as err:  # actor died, unreachable, ...
                    raise WorkerError(f"{self.role} rank {rank} died in {method}: "
                                      f"{type(err).__name__}: {_first_line(err)}", died=True) from err
        return [results[rank] for rank in range(len(refs))]

    def gather_cat(self, refs: list, timeout: float | None = None):
        """`gather`, then the per-rank tensors as one, in the batch's row order."""
        return self.rows_in_order(refs, self.gather(refs, timeout))

    @staticmethod
    def rows_in_order(refs: RankRefs, per_rank: list[torch.Tensor]) -> torch.Tensor:
        """Per-rank row results of a `call_split` as one tensor in the batch's row order."""
        rows = cat_rows(per_rank)
        order = getattr(refs, "order", None)
        if order is None:
            return rows
        out = torch.empty_like(rows)
        out[order] = rows
        return out

    def run_all(self, method: str, *args, timeout: float | None = None, **kwargs) -> list:
        """call_all + gather."""
        return self.gather(self.call_all(method, *args, **kwargs), timeout)

    def run_split(self, method: str, batch: Batch, *, timeout: float | None = None, **kwargs):
        """call_split + gather_cat (for verbs returning per-row tensors)."""
        return self.gather_cat(self.call_split(method, batch, **kwargs), timeout)

    def kill(self, grace_s: float = 15.0) -> None:
        """End every rank's process: ask each to `shutdown` (release shared memory, engine
        processes) for up to `grace_s` seconds, then kill. Dead or stuck ranks only cost
        the wait."""
        refs = []
        for actor in self.actors:
            try:
                refs.append(actor.shutdown.remote())
            except Exception:  # no such verb, or already gone
                pass
        if refs and grace_s > 0:
            ray.wait(refs, num_returns=len(refs), timeout=grace_s)
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors = []


def _first_line(err: Exception) -> str:
    """Ray's death errors run to many lines of context; the first says what happened."""
    text = str(err).strip()
    return text.splitlines()[0] if text else ""

"""Bring up the roles of a run on Ray: placement groups, worker groups, engines.

Only the controller imports this (it needs ray). `colocated` puts every role in one
placement group (on GPU they share devices); `split` gives each role its own group,
which Ray may place on different nodes. Resources are checked against the cluster
before anything is created, so a request that cannot fit fails with a message
instead of waiting forever.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray
from ray.util.placement_group import placement_group, remove_placement_group

from rlhf.config.schema import RunConfig
from workers import device as dev


class ClusterResourceError(RuntimeError):
    """The cluster lacks what the config asks for."""


@dataclass
class RoleRequest:
    role: str
    count: int
    num_cpus: float
    num_gpus: float


def role_requests(cfg: RunConfig) -> list[RoleRequest]:
    reqs = [RoleRequest("rollout", cfg.rollout.num_workers, cfg.rollout.num_cpus, cfg.rollout.num_gpus),
            RoleRequest("actor", cfg.actor.num_workers, cfg.actor.num_cpus, cfg.actor.num_gpus),
            RoleRequest("reference", 1, cfg.reference.num_cpus, cfg.reference.num_gpus)]
    if cfg.algorithm.uses_critic:
        reqs.append(RoleRequest("critic", cfg.critic.num_workers, cfg.critic.num_cpus, cfg.critic.num_gpus))
    if cfg.model.reward_model:
        reqs.append(RoleRequest("reward_model", 1, cfg.reward.num_cpus, 0.0))
    return reqs


def check_cluster(reqs: list[RoleRequest]) -> None:
    """Fail fast when the cluster cannot host the requested roles."""
    gpu = dev.detect().is_gpu
    need_cpu = sum(r.count * r.num_cpus for r in reqs)
    need_gpu = sum(r.count * r.num_gpus for r in reqs) if gpu else 0.0
    have = ray.cluster_resources()
    problems = []
    if need_cpu > have.get("CPU", 0) + 1e-9:
        problems.append(f"{need_cpu:g} CPUs (cluster has {have.get('CPU', 0):g})")
    if need_gpu > have.get("GPU", 0) + 1e-9:
        problems.append(f"{need_gpu:g} GPUs (cluster has {have.get('GPU', 0):g})")
    if problems:
        detail = ", ".join(f"{r.role}: {r.count} x ({r.num_cpus:g} CPU, {r.num_gpus:g} GPU)" for r in reqs)
        raise ClusterResourceError(
            f"the roles need {' and '.join(problems)}; requested {detail}. Lower <role>.num_cpus / "
            f"num_gpus / num_workers in the config or use a larger cluster")


@dataclass
class Placement:
    """Where each role's ranks go: (placement group, bundle indices) per role."""
    groups: list = field(default_factory=list)
    slots: dict = field(default_factory=dict)

    def of(self, role: str):
        return self.slots.get(role, (None, None))

    def remove(self) -> None:
        for pg in self.groups:
            try:
                remove_placement_group(pg)
            except Exception:  # already gone with the cluster
                pass


def _bundle(req: RoleRequest) -> dict:
    return {k: v for k, v in (("CPU", req.num_cpus), ("GPU", req.num_gpus if dev.detect().is_gpu else 0)) if v}


def make_placement(cfg: RunConfig, reqs: list[RoleRequest], timeout_s: float = 120.0) -> Placement:
    check_cluster(reqs)
    placement = Placement()
    if cfg.cluster.placement == "colocated":
        bundles, slots, index = [], {}, 0
        for req in reqs:
            bundles += [_bundle(req)] * req.count
            slots[req.role] = list(range(index, index + req.count))
            index += req.count
        pg = placement_group(bundles, strategy="PACK", name="rlhf-colocated")
        _wait(pg, "colocated placement group", timeout_s)
        placement.groups.append(pg)
        placement.slots = {role: (pg, idx) for role, idx in slots.items()}
    else:
        for req in reqs:
            pg = placement_group([_bundle(req)] * req.count, strategy="PACK", name=f"rlhf-{req.role}")
            _wait(pg, f"placement group of role {req.role}", timeout_s)
            placement.groups.append(pg)
            placement.slots[req.role] = (pg, list(range(req.count)))
    return placement


def _wait(pg, what: str, timeout_s: float) -> None:
    start = time.time()
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise ClusterResourceError(
            f"{what} not placed after {time.time() - start:.0f}s: no node (set) has the resources "
            f"{pg.bundle_specs}; check `ray status`") from None

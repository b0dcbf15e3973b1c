"""Bring up the roles of a run on Ray: placement groups, worker groups, engines.

Only the controller imports this (it needs ray). `PPORoles` starts the worker groups
of a PPO run, tells the busy ones how many ranks share their node's cores before each
phase, and stops them. `colocated` puts every role in one
placement group, packed onto as few nodes as fit (ranks share a GPU only when their
<role>.num_gpus are fractions that add up to at most 1); `split` gives each role its own group,
which Ray may place on different nodes; `cluster.role_resources` adds custom Ray
resources to a role's ranks, which pins the role to the nodes that have them.
Resources are checked against the cluster (totals, and each rank against single
nodes) before anything is created, so a request that cannot fit fails with a
message naming the role and resource instead of waiting forever. Where the ranks
landed is written to the run directory (`placement.json`) and printed.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

from rlhf.config.schema import RunConfig
from rlhf.metrics import progress, say
from rlhf.errors import RunError


class ClusterResourceError(RunError):
    """The cluster lacks what the config asks for."""


@dataclass
class RoleRequest:
    role: str
    count: int
    num_cpus: float
    num_gpus: float
    resources: dict = field(default_factory=dict)  # custom Ray resources per rank (cluster.role_resources)

    def bundle(self) -> dict:
        """Ray resources of one rank: its placement-group bundle (the config's, whatever
        the driver runs on)."""
        wanted = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}
        return {k: v for k, v in wanted.items() if v}


def role_requests(cfg: RunConfig) -> list[RoleRequest]:
    reqs = [RoleRequest("rollout", cfg.rollout.num_workers, cfg.rollout.num_cpus, cfg.rollout.num_gpus),
            RoleRequest("actor", cfg.actor.num_workers, cfg.actor.num_cpus, cfg.actor.num_gpus),
            RoleRequest("reference", 1, cfg.reference.num_cpus, cfg.reference.num_gpus)]
    if cfg.algorithm.uses_critic:
        reqs.append(RoleRequest("critic", cfg.critic.num_workers, cfg.critic.num_cpus, cfg.critic.num_gpus))
    if cfg.model.reward_model:
        reqs.append(RoleRequest("reward_model", 1, cfg.reward.num_cpus, cfg.reward.num_gpus))
    return reqs


def with_role_resources(cfg, reqs: list[RoleRequest]) -> list[RoleRequest]:
    """Add each role's `cluster.role_resources` to its request (PPO roles and the sft/rm stages)."""
    extra = cfg.cluster.role_resources
    return [replace(r, resources={**extra.get(r.role, {}), **r.resources}) for r in reqs]


def check_cluster(reqs: list[RoleRequest]) -> None:
    """Fail fast when the cluster cannot host the requested roles."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problems = resource_problems(reqs, nodes)
    if problems:
        raise ClusterResourceError(
            "the cluster cannot host the roles:\n  " + "\n  ".join(problems) + "\nLower <role>.num_cpus / "
            "num_gpus / num_workers, fix cluster.role_resources, or start nodes with those resources "
            "(`ray start --num-cpus N --resources '{\"name\": N}'`); see `ray status`")


def resource_problems(reqs: list[RoleRequest], nodes: list[dict]) -> list[str]:
    """What the cluster (one resource dict per alive node) lacks, one line per problem.

    Two checks: each resource's total over all ranks against the cluster's total, and
    each rank's bundle against single nodes (a bundle never spans nodes)."""
    problems, need, users, short = [], {}, {}, set()
    for r in reqs:
        for name, amount in r.bundle().items():
            need[name] = need.get(name, 0.0) + r.count * amount
            users.setdefault(name, []).append(f"{r.role} {r.count} x {amount:g}")
    for name, amount in need.items():
        have = sum(node.get(name, 0.0) for node in nodes)
        if amount > have + 1e-9:
            short.add(name)
            problems.append(f"resource {name!r}: the roles need {amount:g} ({', '.join(users[name])}), "
                            f"the cluster has {have:g}")
    for r in reqs:
        bundle = r.bundle()
        if not any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items()) for node in nodes):
            missing = [k for k, v in bundle.items() if not any(node.get(k, 0.0) + 1e-9 >= v for node in nodes)]
            if missing and set(missing) <= short:
                continue  # already reported as a cluster-wide shortage
            why = (f"no node has enough {', '.join(map(repr, missing))}" if missing
                   else "no single node has all of it")
            problems.append(f"role {r.role!r}: one rank needs {_fmt(bundle)}; {why}")
    return problems


def _fmt(resources: dict) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items()) + "}"


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

    def nodes(self) -> dict[str, list[dict]]:
        """Role -> the node of each rank ({"node_id", "ip"}), read from the placement groups."""
        ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
        out = {}
        for role, (pg, idx) in self.slots.items():
            on = placement_group_table(pg)["bundles_to_node_id"]
            out[role] = [{"node_id": on[i], "ip": ips.get(on[i])} for i in idx]
        return out

    def save(self, path: Path) -> dict[str, list[dict]]:
        """Write placement.json (role -> node of each rank), print the roles of each node
        and return `nodes()`."""
        nodes = self.nodes()
        Path(path).write_text(json.dumps(nodes, indent=1))
        per_node: dict[str, list[str]] = {}
        for role, ranks in nodes.items():
            for rank in ranks:
                per_node.setdefault(f"{rank['node_id'][:8]} ({rank['ip']})", []).append(role)
        say("placement: " + "; ".join(f"node {n}: {', '.join(roles)}" for n, roles in per_node.items()))
        return nodes


def core_sharers(busy: dict[str, list[str]]) -> dict[str, list[int]]:
    """Role -> for each rank, how many ranks of all the busy roles share its node
    (busy: role -> node of each rank)."""
    per_node: dict[str, int] = {}
    for nodes in busy.values():
        for node in nodes:
            per_node[node] = per_node.get(node, 0) + 1
    return {role: [per_node[node] for node in nodes] for role, nodes in busy.items()}


def make_placement(cfg: RunConfig, reqs: list[RoleRequest], timeout_s: float = 120.0) -> Placement:
    reqs = with_role_resources(cfg, reqs)
    check_cluster(reqs)
    placement = Placement()
    if cfg.cluster.placement == "colocated":
        bundles, slots, index = [], {}, 0
        for req in reqs:
            bundles += [req.bundle()] * req.count
            slots[req.role] = list(range(index, index + req.count))
            index += req.count
        pg = placement_group(bundles, strategy="PACK", name="rlhf-colocated")
        _wait(pg, "colocated placement group", timeout_s)
        placement.groups.append(pg)
        placement.slots = {role: (pg, idx) for role, idx in slots.items()}
    else:
        for req in reqs:
            pg = placement_group([req.bundle()] * req.count, strategy="PACK", name=f"rlhf-{req.role}")
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


# ==================================================================== the PPO run's groups
ROLE_NAMES = ("rollout", "actor", "critic", "reference", "reward_model")


class PPORoles:
    """The worker groups of a PPO run (None where the config has no such role)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.placement: Placement | None = None
        self.rank_nodes: dict[str, list[str]] = {}  # role -> node id of each rank
        self.rollout = self.actor = self.critic = self.reference = self.reward_model = None

    def start(self, paths: dict[str, str | None], run_dir: Path) -> None:
        """Place and start every role, then connect the actor to the rollout engines.
        Groups started before a failure stay reachable, so `kill()` stops them."""
        from workers.actor import ActorWorker
        from workers.critic import CriticWorker
        from workers.reference import ReferenceWorker
        from workers.reward_model import RewardModelWorker
        from workers.rollout import RolloutWorker

        cfg, started = self.cfg, time.time()
        self.placement = make_placement(cfg, role_requests(cfg))
        placed = self.placement.save(run_dir / "placement.json")
        self.rank_nodes = {role: [rank["node_id"] for rank in ranks] for role, ranks in placed.items()}
        common = dict(train_cfg=cfg.train, seed=cfg.run.seed, dtype=cfg.model.dtype)
        with progress("starting roles", total=len(placed) + 1, unit="role") as bar:
            self.rollout = self._group("rollout", RolloutWorker, cfg.rollout, bar, distributed=False,
                                       model_path=paths["policy"], cfg=cfg.rollout, seed=cfg.run.seed)
            self.actor = self._group("actor", ActorWorker, cfg.actor, bar, model_path=paths["policy"],
                                     trainer_cfg=cfg.actor, algo_cfg=cfg.algorithm, **common)
            if cfg.algorithm.uses_critic:
                self.critic = self._group("critic", CriticWorker, cfg.critic, bar, model_path=paths["critic"],
                                          trainer_cfg=cfg.critic, algo_cfg=cfg.algorithm, **common)
            self.reference = self._group("reference", ReferenceWorker, cfg.reference, bar, workers=1,
                                         model_path=paths["reference"], cfg=cfg.reference,
                                         micro_batch_size=cfg.train.micro_batch_size, packing=cfg.train.packing,
                                         max_tokens=cfg.train.max_tokens_per_infer_batch)
            if paths["reward_model"]:
                self.reward_model = self._group("reward_model", RewardModelWorker, cfg.reward, bar, workers=1,
                                                model_path=paths["reward_model"],
                                                normalize=cfg.reward.model_normalize,
                                                micro_batch_size=cfg.train.micro_batch_size,
                                                packing=cfg.train.packing,
                                                max_tokens=cfg.train.max_tokens_per_infer_batch)
            bar.set_postfix_str("connecting actor and rollout for weight sync")
            transport = self.actor.run_all("connect_rollout", self.rollout.actors, cfg.sync.transport,
                                           cfg.sync.bucket_mb << 20, cfg.rollout.dtype)[0]
            bar.update()
        say(f"roles up in {time.time() - started:.0f}s (weight sync transport: {transport})")

    def _group(self, role: str, worker_cls: type, section, bar, *, workers: int | None = None,
               distributed: bool = True, **init_kwargs):
        """One role's WorkerGroup in its placement slots (one step of the start-up bar);
        its calls time out after run.call_timeout_s (a longer call counts as hung)."""
        from workers.group import WorkerGroup

        bar.set_postfix_str(f"loading {role}")
        pg, idx = self.placement.of(role)
        group = WorkerGroup(worker_cls, workers or section.num_workers, num_cpus=section.num_cpus,
                            num_gpus=section.num_gpus, placement_group=pg,
                            bundle_indices=idx, name=role, init_kwargs=init_kwargs, distributed=distributed)
        group.call_timeout_s = self.cfg.run.call_timeout_s or None
        bar.update()
        return group

    def groups(self) -> list:
        """The groups started so far."""
        return [g for g in (getattr(self, name) for name in ROLE_NAMES) if g is not None]

    def share_cores(self, *groups) -> None:
        """CPU roles (num_gpus 0) with cluster.torch_threads=0: the groups busy in the next phase split their
        nodes' cores into torch threads (None entries are skipped). Ray starts a worker
        that asks for less than one CPU with one thread; a role running alone is ~1.9x
        faster on 2 cores with both (BENCHMARKS.md). Calls to an actor run in order, so
        no wait is needed."""
        if self.cfg.cluster.torch_threads:
            return
        on_gpu = {r.role for r in role_requests(self.cfg) if r.num_gpus}
        busy = [g for g in groups if g is not None and g.role not in on_gpu]
        sharers = core_sharers({g.role: self.rank_nodes[g.role] for g in busy})
        for group in busy:
            for actor, count in zip(group.actors, sharers[group.role]):
                actor.share_cores.remote(count)

    def kill(self) -> None:
        """Stop every group (orderly shutdown first) and free the placement groups."""
        for group in self.groups():
            group.kill()
        if self.placement:
            self.placement.remove()

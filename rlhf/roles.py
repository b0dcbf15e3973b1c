"""Bring up the roles of a run on Ray: placement groups, worker groups, engines.

Only the controller imports this (it needs ray). `PPORoles` starts the worker groups
of a PPO run, tells the busy ones how many ranks share their node's cores before each
phase, and stops them. `colocated` puts every role in one
placement group, packed onto as few nodes as fit; on GPUs it is the hybrid engine: the
ranks of roles asking for a fraction of a GPU share whole-GPU bundles (`colocated_plan`:
actor rank i, rollout engine i and the reference on bundle 0 on one device); `split` gives each role its own group,
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


def rollout_sleeps(cfg: RunConfig) -> bool:
    """Whether the rollout engines sleep while the trainers run: rollout.sleep_between_steps,
    by default on in the hybrid engine (colocated, engines on a fraction of a GPU)."""
    if cfg.rollout.sleep_between_steps is not None:
        return cfg.rollout.sleep_between_steps
    return engines_share_gpus(cfg)


def engines_share_gpus(cfg: RunConfig) -> bool:
    """The hybrid engine: colocated rollout engines on a fraction of a GPU."""
    return cfg.cluster.placement == "colocated" and 0 < cfg.rollout.num_gpus < 1


def weight_transfer_backend(cfg: RunConfig) -> str | None:
    """The vLLM weight-transfer backend the rollout engines start with (GPU engines only:
    `ipc` in the hybrid engine, else `nccl`; see workers.vllm_transfer.engine_backend)."""
    from workers.vllm_transfer import engine_backend

    return engine_backend(cfg.cluster.placement, cfg.sync.transport, cfg.rollout.num_gpus, cfg.actor.num_gpus)


def reference_in_actor(cfg: RunConfig) -> bool:
    """actor.lora on: the reference is the actor's base model (adapters disabled), no role of its own."""
    return cfg.actor.lora.enabled


def role_requests(cfg: RunConfig) -> list[RoleRequest]:
    reqs = [RoleRequest("rollout", cfg.rollout.num_workers, cfg.rollout.num_cpus, cfg.rollout.num_gpus),
            RoleRequest("actor", cfg.actor.num_workers, cfg.actor.num_cpus, cfg.actor.num_gpus)]
    if not reference_in_actor(cfg):
        reqs.append(RoleRequest("reference", 1, cfg.reference.num_cpus, cfg.reference.num_gpus))
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


@dataclass
class ColocatedPlan:
    """The bundles of the one placement group of `cluster.placement: colocated`.

    Hybrid engine (GPU): the ranks of roles asking for a FRACTION of a GPU share whole-GPU
    bundles, rank i of each such role on GPU bundle i (the actor rank, the rollout engine
    and, on bundle 0, the reference of a 0.4/0.4/0.2 split). Ray then hands each of them
    its fraction of that bundle's GPU: the same physical device. Other ranks (CPU roles,
    whole GPUs) get a bundle each, as on CPU, where nothing is shared."""
    bundles: list[dict]
    slots: dict[str, list[int]]
    shared: dict[int, list[tuple[str, int, float]]]  # GPU bundle -> (role, rank, GPU fraction)

    def check_requests(self, reqs: list[RoleRequest]) -> list[RoleRequest]:
        """What to check against the cluster: each shared GPU bundle as it is reserved
        (a whole GPU), the other roles as they ask."""
        shared_roles = {role for ranks in self.shared.values() for role, _, _ in ranks}
        out = [r for r in reqs if r.role not in shared_roles]
        for b in self.shared:
            bundle = self.bundles[b]
            out.append(RoleRequest(f"GPU bundle {b} ({', '.join(f'{role} {rank}' for role, rank, _ in self.shared[b])})",
                                   1, bundle.get("CPU", 0.0), bundle["GPU"],
                                   {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}))
        return out


def colocated_plan(reqs: list[RoleRequest]) -> ColocatedPlan:
    """Bundles and slots of the colocated placement group (see ColocatedPlan). A GPU whose
    ranks ask for more than 1 in total is an error naming them."""
    sharing = [r for r in reqs if 0 < r.num_gpus < 1]
    gpus = max((r.count for r in sharing), default=0)
    bundles: list[dict] = [{"GPU": 1.0} for _ in range(gpus)]
    shared: dict[int, list[tuple[str, int, float]]] = {b: [] for b in range(gpus)}
    slots: dict[str, list[int]] = {}
    for req in sharing:
        slots[req.role] = list(range(req.count))
        for rank in range(req.count):
            for name, amount in req.bundle().items():
                if name != "GPU":
                    bundles[rank][name] = bundles[rank].get(name, 0.0) + amount
            shared[rank].append((req.role, rank, req.num_gpus))
    for b, ranks in shared.items():
        total = sum(f for _, _, f in ranks)
        if total > 1 + 1e-9:
            raise ClusterResourceError(
                f"colocated placement: GPU {b} would be shared by "
                + ", ".join(f"{role} rank {rank} ({f:g})" for role, rank, f in ranks)
                + f" = {total:g} GPUs > 1; lower those roles' num_gpus so the ranks sharing a GPU add up to <= 1")
    for req in reqs:
        if req in sharing:
            continue
        slots[req.role] = list(range(len(bundles), len(bundles) + req.count))
        bundles += [req.bundle()] * req.count
    return ColocatedPlan(bundles, slots, {b: r for b, r in shared.items() if r})


def make_placement(cfg: RunConfig, reqs: list[RoleRequest], timeout_s: float = 120.0) -> Placement:
    reqs = with_role_resources(cfg, reqs)
    placement = Placement()
    if cfg.cluster.placement == "colocated":
        plan = colocated_plan(reqs)
        check_cluster(plan.check_requests(reqs))
        bundles, slots = plan.bundles, plan.slots
        pg = placement_group(bundles, strategy="PACK", name="rlhf-colocated")
        _wait(pg, "colocated placement group", timeout_s)
        placement.groups.append(pg)
        placement.slots = {role: (pg, idx) for role, idx in slots.items()}
    else:
        check_cluster(reqs)
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
        cfg, started = self.cfg, time.time()
        self.placement = make_placement(cfg, role_requests(cfg))
        placed = self.placement.save(run_dir / "placement.json")
        if reference_in_actor(cfg):
            say("reference: the actor's base model with its LoRA adapters disabled (actor.lora), no reference role")
        self.rank_nodes = {role: [rank["node_id"] for rank in ranks] for role, ranks in placed.items()}
        with progress("starting roles", total=len(placed) + 1, unit="role") as bar:
            bar.set_postfix_str("loading " + ", ".join(placed))
            # An engine sizes its KV cache from the GPU memory it finds free: on a shared GPU
            # it starts once the trainers there have loaded; elsewhere everything loads at once.
            if not engines_share_gpus(cfg):
                self._start_engines(paths)
            self._start_trainers(paths)
            if engines_share_gpus(cfg):
                self._wait_loaded(bar)
                self._start_engines(paths)
            self._wait_loaded(bar)
            bar.set_postfix_str("connecting actor and rollout for weight sync")
            senders = self.actor.run_all("device_report")
            transport = self.actor.run_all("connect_rollout", self.rollout.actors, cfg.sync.transport,
                                           cfg.sync.bucket_mb << 20, cfg.rollout.dtype, senders,
                                           lora_merge=cfg.sync.lora_merge)[0]
            bar.update()
        say(f"roles up in {time.time() - started:.0f}s (weight sync transport: {transport})")

    def _start_engines(self, paths: dict[str, str | None]) -> None:
        """Create the rollout engines' group, loading."""
        from workers.rollout import RolloutWorker

        cfg = self.cfg
        adapter_sync = cfg.actor.lora.enabled and not cfg.sync.lora_merge
        self.rollout = self._group("rollout", RolloutWorker, cfg.rollout, distributed=False,
                                   model_path=paths["policy"], cfg=cfg.rollout, seed=cfg.run.seed,
                                   weight_transfer=weight_transfer_backend(cfg),
                                   lora_rank=cfg.actor.lora.rank if adapter_sync else None)

    def _start_trainers(self, paths: dict[str, str | None]) -> None:
        """Create the actor, critic, reference and reward-model groups, loading."""
        from workers.actor import ActorWorker
        from workers.critic import CriticWorker
        from workers.reference import ReferenceWorker
        from workers.reward_model import RewardModelWorker

        cfg = self.cfg
        common = dict(train_cfg=cfg.train, seed=cfg.run.seed, dtype=cfg.model.dtype)
        self.actor = self._group("actor", ActorWorker, cfg.actor, model_path=paths["policy"],
                                 trainer_cfg=cfg.actor, algo_cfg=cfg.algorithm, **common)
        if cfg.algorithm.uses_critic:
            self.critic = self._group("critic", CriticWorker, cfg.critic, model_path=paths["critic"],
                                      trainer_cfg=cfg.critic, algo_cfg=cfg.algorithm, **common)
        infer = dict(micro_batch_size=cfg.train.micro_batch_size, packing=cfg.train.packing,
                     max_tokens=cfg.train.max_tokens_per_infer_batch)
        if not reference_in_actor(cfg):
            self.reference = self._group("reference", ReferenceWorker, cfg.reference, workers=1,
                                         model_path=paths["reference"], cfg=cfg.reference, **infer)
        if paths["reward_model"]:
            self.reward_model = self._group("reward_model", RewardModelWorker, cfg.reward, workers=1,
                                            model_path=paths["reward_model"],
                                            normalize=cfg.reward.model_normalize, **infer)

    def _group(self, role: str, worker_cls: type, section, *, workers: int | None = None,
               distributed: bool = True, **init_kwargs):
        """One role's WorkerGroup in its placement slots, created loading (not waited for);
        its calls time out after run.call_timeout_s (a longer call counts as hung)."""
        from workers.group import WorkerGroup

        pg, idx = self.placement.of(role)
        group = WorkerGroup(worker_cls, workers or section.num_workers, num_cpus=section.num_cpus,
                            num_gpus=section.num_gpus, placement_group=pg, bundle_indices=idx, name=role,
                            init_kwargs=init_kwargs, distributed=distributed, wait=False)
        group.call_timeout_s = self.cfg.run.call_timeout_s or None
        group.balance_rows = self.cfg.train.packing != "never"  # packed forwards cost real tokens: even them out
        return group

    def _wait_loaded(self, bar) -> None:
        """All roles load at once (their processes overlap imports, model loads and
        DeepSpeed set-up); one step of the start-up bar per role."""
        loading = [group for group in self.groups() if not group.ready]
        for group in loading:
            group.start_loading()
        for group in loading:
            group.wait_ready()
            bar.update()

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

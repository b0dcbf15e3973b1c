"""cluster.role_resources: config validation and the start-up resource check (no Ray cluster);
how roles share a node's cores."""
import os
from pathlib import Path

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.roles import RoleRequest, resource_problems, with_role_resources

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SPLIT = ["cluster.placement=split", "cluster.role_resources.rollout.rlhf_worker=1",
         "cluster.role_resources.actor.rlhf_head=1"]


def test_role_resources_load_and_reach_the_requests():
    cfg = load_config(RECIPES / "ppo_tiny.yaml", SPLIT)
    assert cfg.cluster.role_resources == {"rollout": {"rlhf_worker": 1.0}, "actor": {"rlhf_head": 1.0}}
    reqs = with_role_resources(cfg, [RoleRequest("rollout", 1, 0.5, 0.0), RoleRequest("critic", 1, 0.5, 0.0)])
    assert reqs[0].bundle() == {"CPU": 0.5, "rlhf_worker": 1.0}
    assert reqs[1].bundle() == {"CPU": 0.5}


@pytest.mark.parametrize("override,needle", [
    ("cluster.role_resources.rolout.x=1", "unknown role 'rolout'"),
    ("cluster.role_resources.actor.CPU=1", "built-in Ray resource"),
    ("cluster.role_resources.actor.gpu=1", "built-in Ray resource"),
    ("cluster.role_resources.actor.x=0", "cluster.role_resources.actor.x"),
    ("cluster.role_resources.actor.x=1.5", "whole number"),
    ("cluster.role_resources.actor.x=abc", "cluster.role_resources.actor.x"),
])
def test_bad_role_resources_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(RECIPES / "ppo_tiny.yaml", [override])


def test_stage_recipes_use_their_own_role_name():
    cfg = load_config(RECIPES / "sft_tiny.yaml", ["cluster.role_resources.sft.rlhf_head=1"])
    assert cfg.cluster.role_resources == {"sft": {"rlhf_head": 1.0}}
    with pytest.raises(ConfigError, match="roles: \\['sft'\\]"):
        load_config(RECIPES / "sft_tiny.yaml", ["cluster.role_resources.actor.rlhf_head=1"])


HEAD = {"CPU": 2.0, "memory": 1e9, "rlhf_head": 8.0}
WORKER = {"CPU": 2.0, "memory": 1e9, "rlhf_worker": 8.0}


def test_a_cluster_that_fits_has_no_problems():
    reqs = [RoleRequest("rollout", 1, 0.5, 0.0, {"rlhf_worker": 1}), RoleRequest("actor", 2, 0.5, 1.0)]
    assert resource_problems(reqs, [HEAD, {**WORKER, "GPU": 2.0}]) == []


def test_gpu_asks_are_checked_whatever_the_driver_runs_on():
    # The config's GPUs are asked for as written: a cluster without GPUs cannot host them
    # (before, a CPU-only driver silently turned them into 0 and the run landed on CPU).
    reqs = [RoleRequest("actor", 2, 0.5, 1.0)]
    assert reqs[0].bundle() == {"CPU": 0.5, "GPU": 1.0}
    assert resource_problems(reqs, [HEAD, WORKER]) == [
        "resource 'GPU': the roles need 2 (actor 2 x 1), the cluster has 0"]


def test_missing_custom_resource_names_role_and_resource():
    problems = resource_problems([RoleRequest("rollout", 2, 0.5, 0.0, {"gpu_node": 1})], [HEAD, WORKER])
    assert problems == ["resource 'gpu_node': the roles need 2 (rollout 2 x 1), the cluster has 0"]


def test_rank_that_fits_no_single_node():
    # 3 CPUs in all, but no node has 2.5: a bundle never spans nodes
    problems = resource_problems([RoleRequest("actor", 1, 2.5, 0.0)], [HEAD, WORKER])
    assert problems == ["role 'actor': one rank needs {CPU: 2.5}; no node has enough 'CPU'"]
    # each resource exists, but not together on one node
    problems = resource_problems([RoleRequest("rollout", 1, 0.5, 0.0, {"rlhf_head": 1, "rlhf_worker": 1})],
                                 [HEAD, WORKER])
    assert problems == ["role 'rollout': one rank needs {CPU: 0.5, rlhf_head: 1, rlhf_worker: 1}; "
                        "no single node has all of it"]


def test_cpu_total_shortage():
    problems = resource_problems([RoleRequest("actor", 3, 2.0, 0.0)], [HEAD, WORKER])
    assert problems == ["resource 'CPU': the roles need 6 (actor 3 x 2), the cluster has 4"]


# ------------------------------------------------------------------ sharing a node's cores
def test_core_sharers_count_busy_ranks_of_all_roles_per_node():
    from rlhf.roles import core_sharers

    # PPO update on one node: actor and critic split it; GRPO update: the actor alone
    assert core_sharers({"actor": ["a"], "critic": ["a"]}) == {"actor": [2], "critic": [2]}
    assert core_sharers({"actor": ["a"]}) == {"actor": [1]}
    # two actor ranks on two nodes, the reference next to rank 1
    assert core_sharers({"actor": ["a", "b"], "reference": ["b"]}) == {"actor": [1, 2], "reference": [2]}
    assert core_sharers({}) == {}


def test_vllm_runs_in_process_on_cpu_only(monkeypatch):
    from workers import device as dev

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # restored afterwards
    gpu = dev.Device(kind="cuda", dist_backend="nccl", same_node_transport="cuda_ipc", supports_bf16=True)
    assert dev.vllm_engine_kwargs(gpu) == {} and os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    cpu = dev.Device(kind="cpu", dist_backend="gloo", same_node_transport="shm", supports_bf16=True)
    assert dev.vllm_engine_kwargs(cpu) == {"distributed_executor_backend": "uni"}
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"

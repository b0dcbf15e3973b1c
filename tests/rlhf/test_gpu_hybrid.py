"""The hybrid engine's layout as pure config and placement logic (no Ray, no GPU):
which ranks share which GPU bundle, the validated GPU split, when vLLM sleeps."""
import pytest

from rlhf.config import ConfigError, load_config
from rlhf.roles import ClusterResourceError, RoleRequest, colocated_plan, resource_problems, role_requests, rollout_sleeps
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

HYBRID = ["cluster.placement=colocated", "actor.num_workers=2", "rollout.num_workers=2", "actor.num_gpus=0.4",
          "rollout.num_gpus=0.4", "rollout.memory_fraction=0.35", "reference.num_gpus=0.2", "train.micro_batch_size=32"]


def test_fractional_roles_share_whole_gpu_bundles_rank_by_rank():
    cfg = load_config(RECIPES / "grpo_tiny.yaml", HYBRID)
    plan = colocated_plan(role_requests(cfg))
    assert plan.bundles == [{"GPU": 1.0, "CPU": 1.25}, {"GPU": 1.0, "CPU": 1.0}]
    assert plan.slots == {"rollout": [0, 1], "actor": [0, 1], "reference": [0]}
    assert plan.shared == {0: [("rollout", 0, 0.4), ("actor", 0, 0.4), ("reference", 0, 0.2)],
                           1: [("rollout", 1, 0.4), ("actor", 1, 0.4)]}
    # what the cluster must have: two whole GPUs, not the 1.4 the fractions add up to
    checked = plan.check_requests(role_requests(cfg))
    assert sum(r.num_gpus * r.count for r in checked) == 2.0
    assert resource_problems(checked, [{"CPU": 4.0, "GPU": 2.0}]) == []
    assert any("'GPU'" in p for p in resource_problems(checked, [{"CPU": 4.0, "GPU": 1.0}]))


def test_cpu_colocated_keeps_a_bundle_per_rank():
    cfg = load_config(RECIPES / "ppo_tiny.yaml", [])
    reqs = role_requests(cfg)
    plan = colocated_plan(reqs)
    assert plan.shared == {} and plan.bundles == [b for r in reqs for b in [r.bundle()] * r.count]
    assert plan.check_requests(reqs) == reqs
    assert not rollout_sleeps(cfg)


def test_whole_gpu_roles_keep_their_own_bundles_next_to_shared_ones():
    reqs = [RoleRequest("rollout", 2, 0.5, 0.5), RoleRequest("actor", 2, 0.5, 0.5), RoleRequest("critic", 1, 1, 1.0)]
    plan = colocated_plan(reqs)
    assert plan.slots == {"rollout": [0, 1], "actor": [0, 1], "critic": [2]}
    assert plan.bundles[2] == {"CPU": 1, "GPU": 1.0}


def test_a_gpu_shared_beyond_one_is_refused_naming_the_ranks():
    reqs = [RoleRequest("rollout", 1, 0.5, 0.5), RoleRequest("actor", 1, 0.5, 0.4), RoleRequest("reference", 1, 0.25, 0.2)]
    with pytest.raises(ClusterResourceError, match=r"GPU 0 .*rollout rank 0 \(0.5\), actor rank 0 \(0.4\), "
                                                   r"reference rank 0 \(0.2\) = 1.1 GPUs > 1"):
        colocated_plan(reqs)


def test_engine_memory_must_fit_its_gpu_share():
    with pytest.raises(ConfigError, match=r"'rollout.memory_fraction' \(0.5\) must not exceed rollout.num_gpus \(0.4\)"):
        load_config(RECIPES / "grpo_tiny.yaml", HYBRID + ["rollout.memory_fraction=0.5"])


def test_vllm_sleeps_in_the_hybrid_engine_unless_told_otherwise():
    assert rollout_sleeps(load_config(RECIPES / "grpo_tiny.yaml", HYBRID))
    assert not rollout_sleeps(load_config(RECIPES / "grpo_tiny.yaml", HYBRID + ["rollout.sleep_between_steps=false"]))
    split = [o for o in HYBRID if not o.startswith("cluster.")] + ["cluster.placement=split"]
    assert not rollout_sleeps(load_config(RECIPES / "grpo_tiny.yaml", split))


def test_each_engine_needs_an_actor_rank_on_its_gpu():
    with pytest.raises(ConfigError, match=r"'rollout.num_workers' \(2\) must not exceed actor.num_workers \(1\) "
                                          r"in the hybrid engine"):
        load_config(RECIPES / "grpo_tiny.yaml", HYBRID + ["actor.num_workers=1", "train.micro_batch_size=64"])

"""GPU settings that are pure config: the GPU recipes' resource arithmetic, the reward
model's GPUs, the vLLM tensor-parallel setting (no Ray, no GPU)."""
import math
import re
from pathlib import Path

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.roles import resource_problems, role_requests

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
GPU_RECIPES = ["ppo_gsm8k_qwen2.5_0.5b.yaml", "grpo_gsm8k_qwen2.5_0.5b.yaml"]


def gpus_asked(cfg) -> float:
    """Ray GPUs of every rank of every role of a run."""
    return sum(r.count * r.num_gpus for r in role_requests(cfg))


def header_gpus(recipe: Path) -> int:
    """The GPU count a recipe's first line promises ("(1 node, 4+ GPUs)")."""
    found = re.search(r"(\d+)\+? GPUs", recipe.read_text().splitlines()[0])
    assert found, f"{recipe.name}: the header states no GPU count"
    return int(found.group(1))


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_gpu_recipes_ask_for_the_gpus_their_header_states(name):
    cfg = load_config(RECIPES / name, ["model.policy=/models/qwen"])
    promised = header_gpus(RECIPES / name)
    assert math.ceil(gpus_asked(cfg)) == promised
    node = {"CPU": 64.0, "GPU": float(promised), "memory": 512e9}
    assert resource_problems(role_requests(cfg), [node]) == []
    smaller = {**node, "GPU": promised - 1.0}
    assert any("'GPU'" in p for p in resource_problems(role_requests(cfg), [smaller]))


def test_ppo_recipe_counts_to_four():
    cfg = load_config(RECIPES / "ppo_gsm8k_qwen2.5_0.5b.yaml", ["model.policy=/models/qwen"])
    assert {r.role: r.count * r.num_gpus for r in role_requests(cfg)} == {
        "rollout": 1, "actor": 1, "critic": 1, "reference": 1}


def test_reward_model_gpus_come_from_the_config():
    overrides = ["model.reward_model=/models/rm"]
    cfg = load_config(RECIPES / "ppo_tiny.yaml", overrides)
    assert [r.num_gpus for r in role_requests(cfg) if r.role == "reward_model"] == [0.0]
    cfg = load_config(RECIPES / "ppo_tiny.yaml", overrides + ["reward.num_gpus=0.5"])
    assert [r.num_gpus for r in role_requests(cfg) if r.role == "reward_model"] == [0.5]
    with pytest.raises(ConfigError, match="'reward.num_gpus' must be >= 0"):
        load_config(RECIPES / "ppo_tiny.yaml", overrides + ["reward.num_gpus=-1"])


def test_tensor_parallel_size_must_match_the_engine_gpus():
    ok = load_config(RECIPES / "grpo_tiny.yaml", ["rollout.tensor_parallel_size=2", "rollout.num_gpus=2"])
    assert ok.rollout.tensor_parallel_size == 2
    for overrides in (["rollout.tensor_parallel_size=2"],                       # CPU engine: one process
                      ["rollout.tensor_parallel_size=2", "rollout.num_gpus=1"],
                      ["rollout.num_gpus=2"]):                                   # a GPU vLLM never uses
        with pytest.raises(ConfigError, match="'rollout.tensor_parallel_size' .* must equal rollout.num_gpus"):
            load_config(RECIPES / "grpo_tiny.yaml", overrides)
    with pytest.raises(ConfigError, match="'rollout.tensor_parallel_size' must be > 0"):
        load_config(RECIPES / "grpo_tiny.yaml", ["rollout.tensor_parallel_size=0"])


def node(gpus: float) -> dict:
    return {"CPU": 64.0, "GPU": gpus, "memory": 512e9}


def test_hybrid_recipe_fills_one_8_gpu_node():
    from rlhf.roles import colocated_plan, rollout_sleeps, weight_transfer_backend

    cfg = load_config(RECIPES / "grpo_gsm8k_qwen2.5_0.5b_hybrid.yaml", ["model.policy=/models/qwen"])
    reqs = role_requests(cfg)
    plan = colocated_plan(reqs)
    assert len(plan.shared) == 8 and header_gpus(RECIPES / "grpo_gsm8k_qwen2.5_0.5b_hybrid.yaml") == 8
    assert [sum(f for _, _, f in plan.shared[b]) for b in range(8)] == pytest.approx([1.0] + [0.8] * 7)
    checked = plan.check_requests(reqs)
    assert resource_problems(checked, [node(8)]) == []
    assert any("'GPU'" in p for p in resource_problems(checked, [node(7)]))
    assert weight_transfer_backend(cfg) == "ipc" and rollout_sleeps(cfg)


def test_7b_split_recipe_needs_two_8_gpu_nodes():
    from rlhf.roles import rollout_sleeps, weight_transfer_backend

    name = "grpo_gsm8k_qwen2.5_7b_split.yaml"
    cfg = load_config(RECIPES / name, ["model.policy=/models/qwen7b"])
    assert header_gpus(RECIPES / name) == 16 and gpus_asked(cfg) == 15
    assert resource_problems(role_requests(cfg), [node(8), node(8)]) == []
    assert any("'GPU'" in p for p in resource_problems(role_requests(cfg), [node(8)]))
    assert weight_transfer_backend(cfg) == "nccl" and not rollout_sleeps(cfg)
    assert cfg.rollout.tensor_parallel_size == cfg.rollout.num_gpus == 2

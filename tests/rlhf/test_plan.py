"""`rlhf plan`'s accounting (pure arithmetic, checked against published figures and against
what torch really allocates for the tiny model), its placement on described GPU clusters,
and the command's exits. No Ray session, no role started."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf.config import load_config
from rlhf.plan import accounting as acc
from rlhf.plan.build import Lengths, make_plan
from rlhf.plan.cluster import described_cluster
from rlhf.plan.model import PUBLISHED, from_config, load_shape, safetensors_params
from rlhf.plan.roofs import Roof, gpu_roof

ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30


# ---------------------------------------------------------------- ZeRO accounting
@pytest.mark.parametrize("stage,gb", [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)])
def test_zero_stages_match_the_papers_figure_1(stage, gb):
    """ZeRO paper, Figure 1: a 7.5B model, 64 data-parallel ranks, mixed-precision Adam."""
    per_rank = acc.trainer_states(7_500_000_000, stage, 64, mixed=True).total
    assert per_rank / 1e9 == pytest.approx(gb, abs=0.05)


def test_sixteen_bytes_per_param_and_the_partitioned_terms():
    assert acc.zero_paper_bytes_per_param(0, 8) == 16  # 2 + 2 + 12
    assert acc.zero_paper_bytes_per_param(1, 8) == 2 + 2 + 12 / 8
    assert acc.zero_paper_bytes_per_param(2, 8) == 2 + 14 / 8
    assert acc.zero_paper_bytes_per_param(3, 8) == 16 / 8
    # fp32: stage 0 steps the module's own params (16 B); ZeRO stages keep an fp32 partition copy
    assert acc.trainer_states(1, 0, 1, mixed=False).total == 16
    assert acc.trainer_states(1, 2, 1, mixed=False).total == 20
    assert acc.trainer_states(1, 2, 4, mixed=False).total == 4 + (4 + 4 + 8) / 4


def test_lora_has_optimizer_state_only_for_adapters():
    full = acc.trainer_states(1_000_000, 2, 1, mixed=True)
    lora = acc.trainer_states(1_000_000, 2, 1, mixed=True, trainable=10_000)
    assert lora.weights == full.weights == 2_000_000
    assert (lora.gradients, lora.master, lora.optimizer) == (20_000, 40_000, 80_000)


# ---------------------------------------------------------------- model sizes against real objects
@pytest.fixture(scope="module")
def tiny_policy(tiny):
    return tiny["policy"]


def test_param_counts_from_headers_formula_and_published_sizes(tiny_policy):
    shape = load_shape("model.policy", tiny_policy)
    assert shape.params == safetensors_params(Path(tiny_policy)) == shape.formula_params()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_policy)
    assert shape.params == sum(p.numel() for p in model.parameters())
    # Qwen2.5 model cards: 0.49B and 7.61B parameters
    sizes = {n: from_config({**c, "model_type": "qwen2"}).params for n, c in PUBLISHED.items()}
    assert sizes["qwen2.5-0.5b-instruct"] == pytest.approx(0.494e9, rel=0.002)
    assert sizes["qwen2.5-7b-instruct"] == pytest.approx(7.616e9, rel=0.001)


@pytest.mark.parametrize("targets", [["all-linear"], ["q_proj", "v_proj"]])
def test_lora_params_match_peft(tiny_policy, targets):
    from transformers import AutoModelForCausalLM

    from rlhf.config.schema import LoRASection
    from rlhf.lora import add_adapters

    shape = load_shape("model.policy", tiny_policy)
    model = add_adapters(AutoModelForCausalLM.from_pretrained(tiny_policy), LoRASection(rank=8, target_modules=targets))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert shape.lora_params(8, targets) == trainable


def test_kv_cache_formula_matches_the_models_cache(tiny_policy):
    from transformers import AutoModelForCausalLM

    shape = load_shape("model.policy", tiny_policy)
    model = AutoModelForCausalLM.from_pretrained(tiny_policy)
    out = model(torch.randint(3, 50, (3, 11)), use_cache=True)
    cache = out.past_key_values
    nbytes = sum(layer.keys.numel() * 4 + layer.values.numel() * 4 for layer in cache.layers)
    assert acc.kv_cache_bytes(shape, 3, 11, 4) == nbytes
    assert shape.kv_bytes_per_token(2) == 2 * 4 * 2 * 64 * 2  # layers 4, kv heads 2, head_dim 64, bf16


def test_forward_flops_match_torchs_flop_counter(tiny_policy):
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    shape = load_shape("model.policy", tiny_policy)
    model = AutoModelForCausalLM.from_pretrained(tiny_policy, attn_implementation="sdpa")
    rows, width = 4, 32
    with FlopCounterMode(display=False) as counter:
        model(torch.randint(3, 50, (rows, width)))
    # on CPU torch counts the matmuls (aten.mm), not SDPA: the dense part of the formula
    counted = counter.get_total_flops()
    planned = rows * width * shape.forward_flops(0)
    assert planned == pytest.approx(counted, rel=0.002)  # RMSNorm weights count as params, not matmuls


def test_training_activations_within_a_third_of_what_autograd_saves(tiny_policy):
    """The bytes autograd keeps for the backward (saved tensors, deduplicated by storage)."""
    from transformers import AutoModelForCausalLM

    shape = load_shape("model.policy", tiny_policy)
    model = AutoModelForCausalLM.from_pretrained(tiny_policy, attn_implementation="sdpa")
    rows, width = 16, 24
    ids, mask = torch.randint(3, 50, (rows, width)), torch.ones(rows, width, dtype=torch.long)
    mask[:, :3] = 0  # left padding: a masked attention (CPU SDPA's math kernel keeps the probabilities)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(input_ids=ids, attention_mask=mask).logits
        torch.log_softmax(logits.float(), -1).sum().backward()
    planned = acc.train_activation_bytes(shape, rows, width, 4, checkpointing=False, keeps_scores=True)
    assert planned == pytest.approx(sum(storages.values()), rel=0.33)


# ---------------------------------------------------------------- GPU plans on paper
FAST = Roof(100e12, 100e12, 2e12, "test roof")


def gpu_plan(recipe, *overrides, gpus=8, mem=80, nodes=1):
    cfg = load_config(ROOT / "recipes" / recipe, list(overrides))
    return make_plan(cfg, described_cluster(gpus, mem, nodes, None, "H100", None), FAST)


def test_hybrid_engine_shares_gpus_and_sleeps():
    plan = gpu_plan("grpo_gsm8k_qwen2.5_0.5b_hybrid.yaml")
    gpu0 = plan.devices[0]
    assert {(i.role, i.rank) for i in gpu0.items} == {("actor", 0), ("rollout", 0), ("reference", 0)}
    asleep = [i for i in gpu0.items if i.role == "rollout"]
    assert asleep and all(i.phase == "generate" for i in asleep)  # freed while the trainers run
    # bf16 actor, ZeRO-2 over 8 ranks: 2 + 14/8 bytes per parameter
    states = sum(i.nbytes for i in gpu0.items if i.role == "actor" and i.phase == "always")
    assert states == pytest.approx(plan.shapes["policy"].params * (2 + 14 / 8))
    assert plan.fits and len([d for d in plan.devices if d.name.startswith("gpu")]) == 8


def test_split_7b_needs_two_nodes_and_names_what_overflows():
    plan = gpu_plan("grpo_gsm8k_qwen2.5_7b_split.yaml", nodes=2)
    assert plan.fits and plan.bottleneck.name in {"generate", "logprobs_values", "update"}
    actor = [i for i in plan.items if i.role == "actor" and i.rank == 0 and i.phase == "always"]
    assert sum(i.nbytes for i in actor) == pytest.approx(plan.shapes["policy"].params * 16 / 6)  # ZeRO-3 x6
    with pytest.raises(ValueError, match="GPUs"):
        gpu_plan("grpo_gsm8k_qwen2.5_7b_split.yaml", nodes=1)
    small = gpu_plan("grpo_gsm8k_qwen2.5_7b_split.yaml", "rollout.memory_fraction=0.5", mem=16, nodes=2)
    assert not small.fits
    over = {d.first_overflow().role: d.first_overflow().what for d in small.devices if d.first_overflow()}
    # ZeRO-3 over 6 ranks: 16 x 7.6B / 6 = 20 GB; the reference's 15 GB of weights + logits; the
    # engines (7.1 GiB per TP-2 GPU in an 8 GiB share) still fit
    assert set(over) == {"actor", "reference"} and "Adam" in over["actor"]


def test_lora_syncs_only_the_adapter():
    full = gpu_plan("grpo_gsm8k_qwen2.5_0.5b_hybrid.yaml")
    lora = gpu_plan("grpo_gsm8k_qwen2.5_0.5b_hybrid.yaml", "actor.lora.rank=16")
    assert lora.sync_bytes == lora.shapes["policy"].lora_params(16, ["all-linear"]) * 2
    assert lora.sync_bytes < full.sync_bytes / 50 and "adapter" in lora.sync_what


def test_gpu_roof_table_and_override():
    assert gpu_roof("a100", None, 0.5).flops == pytest.approx(156e12)
    assert gpu_roof("H100", 500.0, 1.0).flops == 500e12
    with pytest.raises(ValueError, match="gpu-kind"):
        gpu_roof("Z9000", None, 0.4)


# ---------------------------------------------------------------- the command
def rlhf(*args):
    return subprocess.run([sys.executable, "-m", "rlhf.cli", "plan", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_plan_command_json_and_does_not_fit_exit():
    ok = rlhf("recipes/grpo_gsm8k_qwen2.5_0.5b_hybrid.yaml", "--gpus", "8", "--gpu-mem", "80", "--gpu-kind",
              "A100", "--json")
    assert ok.returncode == 0, ok.stderr
    plan = json.loads(ok.stdout)
    assert plan["fits"] and plan["bottleneck"] in plan["phases"] and plan["sync_bytes"] > 0
    tight = rlhf("recipes/grpo_gsm8k_qwen2.5_7b_split.yaml", "--gpus", "8", "--gpu-mem", "16", "--nodes", "2",
                 "--gpu-kind", "H100")
    assert tight.returncode == 3 and "DOES NOT FIT" in tight.stdout


@pytest.mark.parametrize("args,says", [
    (["recipes/grpo_tiny.yaml", "actor.no_such_key=1"], "no_such_key"),
    (["recipes/grpo_tiny.yaml", "--gpus", "-2", "--gpu-mem", "80"], "--gpus"),
    (["recipes/grpo_tiny.yaml", "--gpus", "8"], "--gpu-mem"),
    (["recipes/grpo_tiny.yaml", "--gpus", "abc"], "--gpus"),
    (["recipes/grpo_tiny.yaml", "--nodes", "4"], "--gpus"),
    (["recipes/grpo_gsm8k_qwen2.5_0.5b_hybrid.yaml", "--gpus", "8", "--gpu-mem", "80"], "--gpu-kind"),
    (["recipes/nope.yaml"], "nope.yaml"),
])
def test_bad_input_is_one_line_exit_2(args, says):
    result = rlhf(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in result.stderr


def test_cpu_plan_threads_per_phase_and_process_costs(tiny):
    """CPU: the phase's busy ranks split the cores; trainers under 5M params take one
    thread; every Ray actor process carries its measured fixed cost."""
    from rlhf.plan.build import TRAINER_PROCESS_GIB, wanted_rates
    from rlhf.plan.cluster import Cluster

    cfg = load_config(ROOT / "recipes" / "grpo_tiny.yaml", [])
    cluster = Cluster(nodes=1, host_mem=24 * GIB, cores=4)
    rates = {("decode", 4): 1e9, ("prefill", 4): 2e9, ("infer", 2): 3e9, ("train", 1): 4e9}
    roof = Roof(1e9, 1e9, 1e9, "test", 4, rates)
    lengths = Lengths(8, 5)
    from rlhf.plan.build import model_shapes

    shapes = model_shapes(cfg)
    # grpo_tiny: one rollout engine (4 threads); reference + old log-probs (2 ranks: 2 threads,
    # the actor, a small trainer: 1); the update alone but small: 1 thread
    assert wanted_rates(cfg, cluster, shapes, lengths) == {("decode", 4), ("prefill", 4), ("infer", 2), ("infer", 1),
                                                           ("train", 1)}
    plan = make_plan(cfg, cluster, roof, lengths, shapes)
    phases = {p.name: p for p in plan.phases}
    policy = shapes["policy"]
    from rlhf.plan.build import ENGINE_SECONDS_PER_SEQUENCE as PER_SEQ, TRAINER_SECONDS_PER_ROW as PER_ROW

    assert phases["update"].seconds == pytest.approx(3 * 128 * 13 * policy.forward_flops(6.5) / 4e9 + 128 * PER_ROW)
    prefill = 128 * (8 * policy.forward_flops(4, lm_head=False) + 2 * policy.vocab * policy.hidden)
    assert phases["generate"].seconds == pytest.approx(prefill / 2e9 + 5 * 128 * policy.forward_flops(10.5) / 1e9
                                                       + 128 * PER_SEQ)
    processes = [i for i in plan.items if i.what.startswith("process")]
    assert {(i.role, i.nbytes) for i in processes if i.role != "rollout"} == {
        ("actor", TRAINER_PROCESS_GIB * GIB), ("reference", TRAINER_PROCESS_GIB * GIB)}
    assert all(i.where == "host" for i in plan.items) and len(plan.devices) == 1

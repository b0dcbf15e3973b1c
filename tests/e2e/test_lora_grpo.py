"""End to end: GRPO on the tiny task with actor.lora, adapter-only sync and merged sync.

The reference is the actor's base model (no reference role); the per-step drift check
(rollout vs trainer log-probs) holds while the weight version advances, in both sync modes.
"""
import json

import pytest

from rlhf.metrics import read_metrics
from tests.e2e.test_pipeline import run

pytestmark = pytest.mark.integration

LORA = ["actor.lora.rank=8", "actor.lora.alpha=16", "actor.lr=2e-3", "run.total_steps=3",
        "data.eval_path=null", "run.plots=false"]
# rank 8 on the tiny policy: 4 layers x (4 x 8 x 256 + 3 x 8 x 512) adapter elements, fp32
ADAPTER_BYTES = 4 * (4 * 8 * 256 + 3 * 8 * 512) * 4


def _steps(run_dir):
    return [r for r in read_metrics(run_dir) if r["step"] > 0]


def _check_run(run_dir):
    steps = _steps(run_dir)
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert [r["rollout/weight_version"] for r in steps] == [0.0, 1.0, 2.0]
    for r in steps:  # the engine samples from the trainer's current policy
        assert r["rollout/logprob_diff_mean"] < 0.05, r
    # the adapter moved the policy away from the reference (= base model): KL > 0 after updates
    assert abs(steps[0]["kl/mean"]) < 0.05 and steps[-1]["kl/mean"] > 1e-4
    assert "reference" not in json.loads((run_dir / "placement.json").read_text())
    return steps


def test_grpo_lora_adapter_sync(ray_session, tiny, tmp_path):
    run_dir = run(tmp_path, "grpo_tiny.yaml", *LORA, "actor.lora.export_merged=true", "actor.zero_stage=2")
    steps = _check_run(run_dir)
    assert all(r["sync/bytes"] == ADAPTER_BYTES for r in steps)  # only the adapter travels
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny["policy"])
    PeftModel.from_pretrained(base, run_dir / "final_adapter")
    AutoModelForCausalLM.from_pretrained(run_dir / "final_policy")  # merged


def test_grpo_lora_merged_sync(ray_session, tiny, tmp_path):
    run_dir = run(tmp_path, "grpo_tiny.yaml", *LORA, "sync.lora_merge=true", "run.export_hf=false")
    steps = _check_run(run_dir)
    from safetensors.torch import load_file

    elements = sum(t.numel() for t in load_file(f"{tiny['policy']}/model.safetensors").values())
    # the full merged weights travel, in the engine's dtype (fp32, or bf16 where native)
    assert all(r["sync/bytes"] in (2 * elements, 4 * elements) for r in steps), steps[0]["sync/bytes"]


def test_bad_lora_target_fails_at_start_with_the_key(tmp_path):
    import subprocess
    import sys

    from tests.e2e.test_pipeline import ROOT

    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", "train", str(ROOT / "recipes" / "grpo_tiny.yaml"),
                           "actor.lora.rank=8", "actor.lora.target_modules=[q_proj,qkv]",
                           f"run.output_dir={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config key 'actor.lora.target_modules': the model has no module ['qkv']; it has [" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # refused before the run directory


def test_lora_with_one_step_and_a_multi_turn_environment(ray_session, tiny, tmp_path):
    """The modes compose: adapter versions per weight version serve one_step's batch in
    flight, and the multi-turn loop samples with the current adapter."""
    from tests.e2e.test_agent import readme_environment

    env = readme_environment(tmp_path)
    run_dir = run(tmp_path, "grpo_tiny.yaml", *LORA, "run.export_hf=false", "rollout.mode=one_step",
                  "algorithm.tis_cap=2.0", f"rollout.agent.environment={env}:Retry", "rollout.agent.max_turns=2",
                  "rollout.agent.max_total_tokens=32", "rollout.agent.stop=[]", "reward.functions=[]")
    steps = _steps(run_dir)
    assert [r["async/staleness_mean"] for r in steps] == [0.0, 1.0, 1.0]
    assert [r["rollout/weight_version"] for r in steps] == [0.0, 0.0, 1.0]
    assert all(r["sync/bytes"] == ADAPTER_BYTES for r in steps)
    assert all(1.0 <= r["agent/turns_mean"] <= 2.0 and 0 < r["actor/is_weight_mean"] <= 2.0 for r in steps)

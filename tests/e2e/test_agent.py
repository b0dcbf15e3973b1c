"""End to end: multi-turn rollouts in the real pipeline (Ray, vLLM, DeepSpeed).

The environment is the one the README shows ("Agents and tools"), taken from the README
itself, so the documented interface is the tested one."""
import json
import re
from pathlib import Path

import pytest

from rlhf.config import load_config
from rlhf.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def readme_environment(tmp_path) -> Path:
    block = re.search(r"```python\n(# retry_env\.py\n.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert block, "README lost its environment example"
    path = tmp_path / "retry_env.py"
    path.write_text(block.group(1))
    return path


def test_grpo_with_a_readme_environment(ray_session, tiny, tmp_path):
    from rlhf.controller import PPOTrainer
    from rlhf.stage_run import run_to_end

    env = readme_environment(tmp_path)
    cfg = load_config(ROOT / "recipes" / "grpo_tiny.yaml", [
        "run.total_steps=2", "run.eval_every=2", "run.log_samples_every=1", f"run.output_dir={tmp_path}",
        "run.name=agent", "run.export_hf=false", "run.plots=false", "train.prompts_per_step=8",
        "train.mini_batch_size=64", "train.micro_batch_size=32", "data.eval_size=16",
        f"rollout.agent.environment={env}:Retry", "rollout.agent.max_turns=2",
        "rollout.agent.max_total_tokens=32", "rollout.agent.stop=[]", "reward.functions=[]"])
    run_dir = run_to_end(PPOTrainer(cfg)).run_dir
    steps = [r for r in read_metrics(run_dir) if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2]
    for step in steps:
        assert 1.0 <= step["agent/turns_mean"] <= 2.0 and step["agent/env_errors"] == 0
        assert step["rollout/reward_mean"] == pytest.approx(step["reward/environment"])
        # trainer and rollout agree on the policy tokens of multi-turn trajectories
        assert step["rollout/logprob_diff_mean"] < 0.05
    assert steps[-1]["rollout/weight_version"] == 1.0 and steps[-1].get("eval/reward_mean") is not None
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    retried = [s for s in samples if " wrong, again:" in s["response"]]
    assert retried and all(s["score"] in (0.0, 1.0) for s in samples)  # whole transcripts are logged
    # some first answers were wrong (turn 2 happened), some right (turn 1 ended it)
    assert 0 < steps[0]["agent/turns_mean"] - 1 < 1

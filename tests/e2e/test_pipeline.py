"""End to end: the real pipeline (Ray, vLLM, DeepSpeed, rewards) for a few steps.

Shares the session's Ray. Each run uses tiny batch sizes so the whole module stays
within a few minutes on 2 cores.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.config import load_config
from rlhf.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "rewards" / "fixtures"
SMALL = ["train.prompts_per_step=8", "train.mini_batch_size=32", "train.micro_batch_size=16",
         "data.eval_size=16", "run.log_samples_every=0", "run.plots=true"]

pytestmark = pytest.mark.integration


def run(tmp_path, recipe, *overrides, name="e2e"):
    from rlhf.controller import PPOTrainer

    cfg = load_config(ROOT / "recipes" / recipe, [*SMALL, f"run.output_dir={tmp_path}", f"run.name={name}",
                                                   *overrides])
    trainer = PPOTrainer(cfg)
    try:
        trainer.setup()
        trainer.train()
        trainer.finish()
    finally:
        trainer.cleanup()
    return trainer.run_dir


def test_ppo_tiny_runs_end_to_end(ray_session, tiny, tmp_path):
    run_dir = run(tmp_path, "ppo_tiny.yaml", "run.total_steps=2", "run.save_every=1", "run.eval_every=1")
    records = read_metrics(run_dir)
    steps = [r for r in records if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("rollout/reward_mean", "rollout/response_length", "actor/pg_loss", "actor/pg_clipfrac",
                "actor/approx_kl", "actor/entropy", "critic/vf_loss", "critic/explained_var", "kl/coef",
                "kl/mean", "timing/generate", "perf/tokens_per_s", "sync/seconds", "sync/bytes",
                "sync/GBps", "rollout/logprob_diff_mean", "rollout/logprob_diff_max", "eval/reward_mean"):
        assert steps[-1].get(key) is not None, key
    # rollout (vLLM, bf16) and trainer log-probs agree: the weight sync is live
    assert steps[-1]["rollout/logprob_diff_mean"] < 0.05
    assert steps[-1]["rollout/weight_version"] == 1.0
    assert (run_dir / "config.yaml").exists() and (run_dir / "curves.png").exists()
    assert (run_dir / "checkpoints" / "step-000002" / "COMPLETE").exists()
    final = run_dir / "final_policy"
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(final)


def test_grpo_with_verl_and_openrlhf_reward_files(ray_session, tiny, tmp_path):
    rewards = [f"reward.functions=[{{name: verl, fn: '{FIXTURES / 'verl_reward.py'}:compute_score'}},"
               f"{{name: openrlhf, fn: '{FIXTURES / 'openrlhf_reward.py'}:reward_func', weight: 0.5}}]"]
    run_dir = run(tmp_path, "grpo_tiny.yaml", "run.total_steps=1", "run.export_hf=false", *rewards)
    step = [r for r in read_metrics(run_dir) if r["step"] == 1][0]
    assert step["reward/verl"] is not None and step["reward/openrlhf"] is not None
    assert step.get("critic/vf_loss") is None  # GRPO: no critic


def test_broken_config_fails_before_workers_start(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", "train", str(ROOT / "recipes" / "ppo_tiny.yaml"),
                           "train.mini_batch_size=48", f"run.output_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train.mini_batch_size" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing started, no run directory

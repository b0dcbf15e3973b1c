"""scripts/bench/bench_learning.py: the recipe -> TRL mapping and the prompt order (pure logic)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "bench"))

import bench_learning as bl  # noqa: E402

from rlhf.data import PromptSampler, PromptSet  # noqa: E402

RECIPE = ROOT / "recipes" / "grpo_tiny.yaml"


def test_trl_takes_the_recipes_batches_and_optimizer_steps():
    cfg = bl.load_recipe(RECIPE, ["train.mini_batch_size=32", "train.micro_batch_size=16", "train.ppo_epochs=2"])
    bl.check_comparable(cfg)
    t = bl.trl_trainer_settings(cfg)
    # TRL's generation batch = per-device batch x steps_per_generation = our rollout batch
    assert t["micro_batch"] * t["steps_per_generation"] == cfg.rollout_batch_size
    # TRL's optimizer steps per generation = ours per step (mini-batches x epochs)
    assert t["steps_per_generation"] * t["num_iterations"] // t["grad_accum"] == cfg.mini_batches_per_epoch * 2
    assert (t["lr"], t["kl_coef"], t["clip_low"], t["clip_high"]) == (
        cfg.actor.lr, cfg.algorithm.kl.loss_coef, cfg.algorithm.clip_low, cfg.algorithm.clip_high)
    assert t["loss_type"] == "grpo" and t["scale_rewards"] == "group" and t["top_k"] == 0


@pytest.mark.parametrize("override, key", [("algorithm.tis_cap=2.0", "algorithm.tis_cap"),
                                           ("algorithm.adv_estimator=rloo", "algorithm.adv_estimator"),
                                           ("algorithm.dual_clip=3.0", "algorithm.dual_clip"),
                                           ("algorithm.loss_agg_mode=seq-mean-token-sum", "algorithm.loss_agg_mode")])
def test_settings_trl_cannot_match_are_refused_by_key(override, key):
    with pytest.raises(bl.BenchError, match=f"'{key}'"):
        bl.check_comparable(bl.load_recipe(RECIPE, [override]))


def test_trl_gets_the_prompts_in_our_samplers_order():
    cfg = bl.load_recipe(RECIPE, ["train.prompts_per_step=3", "train.mini_batch_size=24", "train.micro_batch_size=24"])
    size = 10
    train = PromptSet([[i] for i in range(size)], [f"{i}+0=" for i in range(size)], [str(i) for i in range(size)],
                      {"level": list(range(100, 100 + size))}, 0, "mem")
    rows = bl.train_rows_in_our_order(cfg, train, steps=5, seed=7)  # 15 rows: crosses an epoch (10 prompts)
    sampler = PromptSampler(size, 3, 7, cfg.data.shuffle)
    expected = [i for _ in range(5) for i in sampler.next_indices()]
    assert [r["prompt"] for r in rows] == [f"{i}+0=" for i in expected]
    assert [(r["label"], r["level"]) for r in rows] == [(str(i), 100 + i) for i in expected]
    assert [r["prompt"] for r in bl.train_rows_in_our_order(cfg, train, 5, seed=8)] != [r["prompt"] for r in rows]


def test_summary_spreads_over_seeds():
    runs = {1: {"evals": [{"step": 0, "pass_rate": 0.1, "train_seconds": 0.0},
                          {"step": 4, "pass_rate": 0.3, "train_seconds": 8.0}]},
            2: {"evals": [{"step": 0, "pass_rate": 0.1, "train_seconds": 0.0},
                          {"step": 4, "pass_rate": 0.5, "train_seconds": 10.0}]}}
    rows = bl.summarize(runs, samples_per_step=128)
    assert [(r["step"], r["samples"], r["seeds"]) for r in rows] == [(0, 0, 2), (4, 512, 2)]
    last = rows[-1]
    assert (last["mean"], last["min"], last["max"], last["train_seconds"]) == pytest.approx((0.4, 0.3, 0.5, 9.0))

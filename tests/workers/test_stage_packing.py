"""Packing in the offline stages' trainers (SFT, reward model, DPO), real DeepSpeed ranks.

Each stage's worker runs the same step twice from the same weights, padded (`packing:
never`) and packed (`always`; SFT also in token-budget micro-batches): loss, gradient
norm and the held-out quantity afterwards (eval NLL, scores, margins) must agree to
fp32 rounding. Rows have long-tailed lengths, so packing changes every forward's shape.
"""
from __future__ import annotations

import pytest
import torch

from rlhf.config.schema import TrainerSection
from rlhf.config.stages import StageBatchSection
from tests.workers.test_trainers import make_batch

pytestmark = pytest.mark.integration

# prompt, response: 1 to 14 response digits, pairs (chosen, rejected) adjacent
ROWS = [("12+34=", "46"), ("5+6=", "11111111"), ("70+29=", "99"), ("3+4=", "7777"),
        ("41+8=", "49494949494949"), ("66+13=", "79"), ("9+90=", "99999"), ("25+25=", "5")]
BUDGET = 24
CPUS = 0.25


@pytest.fixture(scope="module")
def tok(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny["policy"])


def _pair(worker_cls, model_path, name, budget=0):
    """The same worker padded and packed: same seed, same weights."""
    from workers.group import WorkerGroup

    def group(packing, max_tokens):
        train = StageBatchSection(mini_batch_size=8, micro_batch_size=2, packing=packing,
                                  max_tokens_per_micro_batch=max_tokens)
        return WorkerGroup(worker_cls, 1, num_cpus=CPUS, name=f"{name}-{packing}", init_kwargs=dict(
            model_path=model_path, trainer_cfg=TrainerSection(zero_stage=2, lr=1e-3, grad_clip=1.0, num_cpus=CPUS),
            train_cfg=train, seed=0, dtype="fp32"))

    return group("never", 0), group("always", budget)


def _one(group, method, batch, **kwargs):
    """The single rank's result of `method` on the batch."""
    return group.gather(group.call_split(method, batch, **kwargs))[0]


def _step_and_compare(padded, packed, batch, prefix, **kwargs):
    a, b = _one(padded, "train_step", batch, **kwargs), _one(packed, "train_step", batch, **kwargs)
    assert b[f"{prefix}/loss"] == pytest.approx(a[f"{prefix}/loss"], abs=1e-6)
    assert b[f"{prefix}/grad_norm"] == pytest.approx(a[f"{prefix}/grad_norm"], rel=1e-4)
    assert a[f"{prefix}/grad_norm"] > 0


def test_sft_packed_token_budget_step_equals_padded(ray_session, tiny, tok):
    from workers.sft import SFTWorker

    batch = make_batch(tok, ROWS)
    padded, packed = _pair(SFTWorker, tiny["policy"], "sft", budget=BUDGET)
    try:
        plan = _one(packed, "train_micro_batches", batch)
        costs = batch.attention_mask.sum(-1)
        assert all(int(costs[idx].sum()) <= BUDGET for idx in plan)
        assert sorted(len(idx) for idx in plan) != [2, 2, 2, 2]  # the budget, not micro_batch_size rows
        before = padded.run_split("eval_loss", batch)
        torch.testing.assert_close(packed.run_split("eval_loss", batch), before, rtol=1e-5, atol=1e-5)
        _step_and_compare(padded, packed, batch, "sft")
        after = padded.run_split("eval_loss", batch)
        assert after[0] < before[0]  # the step learned something
        torch.testing.assert_close(packed.run_split("eval_loss", batch), after, rtol=1e-4, atol=1e-4)
    finally:
        padded.kill(), packed.kill()


def test_reward_model_packed_step_equals_padded(ray_session, tiny, tok):
    from workers.rm_trainer import RewardTrainerWorker

    batch = make_batch(tok, ROWS)
    padded, packed = _pair(RewardTrainerWorker, tiny["scorer"], "rm")
    try:
        torch.testing.assert_close(packed.run_split("score", batch), padded.run_split("score", batch),
                                   rtol=1e-5, atol=1e-5)
        _step_and_compare(padded, packed, batch, "rm", margin=0.0)
        torch.testing.assert_close(packed.run_split("score", batch), padded.run_split("score", batch),
                                   rtol=1e-4, atol=1e-4)
    finally:
        padded.kill(), packed.kill()


def test_dpo_packed_step_equals_padded(ray_session, tiny, tok):
    from workers.dpo_trainer import DPOTrainerWorker

    batch = make_batch(tok, ROWS)
    padded, packed = _pair(DPOTrainerWorker, tiny["policy"], "dpo")
    try:
        _step_and_compare(padded, packed, batch, "dpo", beta=0.1)
        margins = padded.run_split("eval_margins", batch)
        assert margins.abs().max() > 1e-4  # the policy moved away from its reference
        torch.testing.assert_close(packed.run_split("eval_margins", batch), margins, rtol=1e-3, atol=1e-5)
    finally:
        padded.kill(), packed.kill()

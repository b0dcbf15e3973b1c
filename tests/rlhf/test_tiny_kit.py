"""The tiny task and its warm start: the carry task, the noisy teacher, and the built kit's
promise to RL (low greedy pass@1, high pass@8)."""
import json
import random
from pathlib import Path

import pytest

from rlhf.tiny import kit, task
from rlhf.tiny.warmstart import teacher_answer


@pytest.mark.parametrize("prompt,slip", [("37+45=", "72"), ("99+99=", "88"), ("19+11=", "20"), ("55+55=", "0")])
def test_forgot_carry_drops_every_carry(prompt, slip):
    assert task.forgot_carry(prompt) == slip


def test_every_problem_carries_and_splits_are_disjoint():
    problems = task.carry_problems()
    assert len(problems) == 3645  # 90 x 90 pairs, 45% with a units carry
    assert all(p["label"] != task.forgot_carry(p["prompt"]) for p in problems)
    train, held_out = task.make_splits(3000, 512, seed=1)
    assert len(train) == 3000 and len(held_out) == 512
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    with pytest.raises(ValueError, match="3645 distinct"):
        task.make_splits(3500, 512, seed=1)


def test_noisy_teacher_is_right_at_its_rate():
    rng, row = random.Random(0), {"prompt": "37+45=", "label": "82"}
    answers = [teacher_answer(row, rng, p_correct=0.25) for _ in range(4000)]
    assert set(answers) == {"82", "72"}
    assert answers.count("82") / len(answers) == pytest.approx(0.25, abs=0.02)


def test_fingerprint_verdict_names_a_different_build(monkeypatch):
    monkeypatch.setattr(kit, "REFERENCE_FINGERPRINT", "a" * 64)
    assert "identical" in kit._fingerprint_verdict("a" * 64)
    assert "differs from the reference build" in kit._fingerprint_verdict("b" * 64)


def test_built_warm_start_leaves_rl_room(tiny):
    """What the recipes rely on: greedy decoding mostly forgets the carry, samples often don't."""
    info = json.loads((Path(tiny["policy"]) / "warm_start.json").read_text())
    assert info["greedy_pass@1"] <= 0.2
    assert info["greedy_forgot_carry"] >= 0.6
    assert info["pass@8"] >= 0.6
    assert 0.1 <= info["sampled_pass@1"] <= 0.4

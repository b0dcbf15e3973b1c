"""CPU-only, pure logic. DAPO dynamic sampling (rlhf.group_filter) on fake rounds."""
import pytest
import torch

from rlhf.batch import Batch
from rlhf.data import PromptSet
from rlhf.group_filter import GroupFilter, SampledRound, concat_batches, informative_groups

N, R = 2, 3


def fake_round(tag: int, scores: list[float], prompt_len: int) -> SampledRound:
    """len(scores) / N prompts of `prompt_len` tokens; row r's response tokens = 100*tag + r."""
    size = len(scores)
    prompt = torch.full((size, prompt_len), 7)
    response = (100 * tag + torch.arange(size))[:, None].expand(size, R)
    ids = torch.cat([prompt, response], 1)
    batch = Batch(input_ids=ids, attention_mask=torch.ones_like(ids), response_mask=torch.ones(size, R),
                  group_ids=torch.arange(size) // N, rollout_logprobs=torch.full((size, R), -float(tag)),
                  weight_version=torch.full((size,), tag), scores=torch.tensor(scores))
    groups = size // N
    rows = PromptSet([[7] * prompt_len] * groups, [f"p{tag}.{g}" for g in range(groups)], [tag] * groups,
                     {"extra": [f"{tag}.{g}" for g in range(groups)]}, 0, "fake")
    return SampledRound(rows, batch, [f"t{tag}.{r}" for r in range(size)], ["stop"] * size,
                        {"reward/task": float(tag)})


def test_informative_groups():
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, float("nan"), float("nan")])
    assert informative_groups(scores, 2).tolist() == [False, True, False, True]  # NaN reaches the NaN check


def test_concat_batches_left_pads_the_shorter_prompts():
    a, b = fake_round(1, [0, 1], 2).batch, fake_round(2, [0, 1], 4).batch
    out = concat_batches([a, b], pad_id=0)
    assert out.input_ids.shape == (4, 4 + R) and out.prompt_len == 4
    assert out.input_ids[0].tolist() == [0, 0, 7, 7, 100, 100, 100]
    assert out.attention_mask[0].tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert out.position_ids()[0, 2:].tolist() == list(range(5))  # positions unchanged by the padding
    assert torch.equal(out.responses, torch.cat([a.responses, b.responses]))
    assert out.weight_version.tolist() == [1, 1, 2, 2]
    assert out.old_logprobs is None


def test_accumulates_informative_groups_over_rounds():
    keep = GroupFilter(target_groups=3, n=N, max_rounds=4, pad_id=0)
    keep.add(fake_round(1, [1, 1, 0, 1, 0, 0], 2))  # groups: equal, mixed, equal -> 1 kept
    assert not keep.done
    keep.add(fake_round(2, [0, 1, 1, 1, 1, 0], 3))  # mixed, equal, mixed -> 3 kept
    assert keep.done and keep.rounds == 2
    out = keep.result()
    # round 1 group 1, round 2 groups 0 and 2, in that order
    assert out.batch.responses[:, 0].tolist() == [102, 103, 200, 201, 204, 205]
    assert out.batch.scores.tolist() == [0, 1, 0, 1, 1, 0]
    assert out.batch.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert out.rows.prompts == ["p1.1", "p2.0", "p2.2"] and out.rows.columns["extra"] == ["1.1", "2.0", "2.2"]
    assert out.texts == ["t1.2", "t1.3", "t2.0", "t2.1", "t2.4", "t2.5"]
    assert out.metrics["rollout/gen_rounds"] == 2
    assert out.metrics["rollout/groups_kept_frac"] == pytest.approx(3 / 6)
    assert out.metrics["rollout/filter_cap_hit"] == 0.0
    assert out.metrics["reward/task"] == pytest.approx(1.5)  # mean over the rounds


def test_surplus_informative_groups_are_cut_to_the_target():
    keep = GroupFilter(target_groups=2, n=N, max_rounds=4, pad_id=0)
    keep.add(fake_round(1, [0, 1, 0, 1, 0, 1], 2))
    assert keep.done and keep.rounds == 1
    out = keep.result()
    assert out.batch.size == 4 and out.rows.prompts == ["p1.0", "p1.1"]
    assert out.metrics["rollout/groups_kept_frac"] == 1.0


def test_cap_tops_up_with_dropped_groups_and_flags_it():
    keep = GroupFilter(target_groups=3, n=N, max_rounds=2, pad_id=0)
    keep.add(fake_round(1, [1, 1, 0, 1, 0, 0], 2))
    keep.add(fake_round(2, [1, 1, 1, 1, 1, 1], 2))
    assert keep.done
    out = keep.result()
    assert out.batch.size == 3 * N  # the shape the batch arithmetic was checked for
    # the informative group first, then the first dropped groups in generation order
    assert out.batch.responses[:, 0].tolist() == [102, 103, 100, 101, 104, 105]
    assert out.metrics["rollout/filter_cap_hit"] == 1.0
    assert out.metrics["rollout/informative_groups_frac"] == pytest.approx(1 / 3)
    assert out.metrics["rollout/groups_kept_frac"] == pytest.approx(1 / 6)


def test_one_round_without_informative_groups_still_gives_a_batch():
    keep = GroupFilter(target_groups=2, n=N, max_rounds=1, pad_id=0)
    keep.add(fake_round(1, [1, 1, 0, 0], 2))
    out = keep.result()
    assert out.batch.size == 4 and out.metrics["rollout/informative_groups_frac"] == 0.0

"""Padding-free packing (rlhf.packing, workers.trainer_base forwards) on the tiny models,
in process: the packed row's log-probs, entropies, values, reward scores and
gradients equal the padded batch's and those of each sequence run alone, for the
attention kernels transformers uses on CPU (sdpa, eager)."""
from __future__ import annotations

import pytest
import torch

from rlhf.algorithms import masked_sum
from rlhf.batch import Batch
from rlhf.packing import pack
from workers.forwards import last_token_scores, response_logprobs, response_values

CPU = torch.device("cpu")
PAIRS = [("12+34=", "46"), ("5+6=", "11"), ("70+29=", "99"), ("3+4=", "7"),
         ("41+8=", "49"), ("66+13=", "79"), ("9+90=", "9"), ("25+25=", "50")]


def make_batch(tok, pairs, extra_right_pad: int = 1) -> Batch:
    """Prompts left-padded, responses (+ EOS) right-padded, as rlhf/batch.py lays them out."""
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p, _ in pairs]
    responses = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for _, r in pairs]
    P, R = max(map(len, prompts)), max(map(len, responses)) + extra_right_pad
    ids = torch.full((len(pairs), P + R), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, P - len(p):P + len(r)] = torch.tensor(p + r)
        mask[i, P - len(p):P + len(r)] = 1
    return Batch(input_ids=ids, attention_mask=mask, response_mask=mask[:, P:].float(),
                 group_ids=torch.arange(len(pairs)))


@pytest.fixture(scope="module")
def tok(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny["policy"])


@pytest.fixture(scope="module")
def batch(tok):
    return make_batch(tok, PAIRS)


@pytest.fixture(scope="module")
def policy(tiny):
    from workers.forwards import load_causal_lm

    return load_causal_lm(tiny["policy"]).eval()


@pytest.fixture(scope="module")
def scorer(tiny):
    from workers.forwards import load_value_model

    return load_value_model(tiny["scorer"], seed=0).eval()


def test_pack_layout_and_refusals():
    ids = torch.tensor([[0, 5, 6, 7, 0], [8, 9, 0, 0, 0], [0, 0, 3, 4, 2]])
    mask = (ids != 0).long()
    packed = pack(ids, mask)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9, 3, 4, 2]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert packed.column.tolist() == [[-1, 0, 1, 2, -1], [3, 4, -1, -1, -1], [-1, -1, 5, 6, 7]]
    assert packed.last_token_index().tolist() == [2, 4, 7]
    src, valid = packed.response_sources(prompt_len=3)  # responses: columns 3, 4
    assert valid.tolist() == [[True, False], [False, False], [True, True]]
    assert src.tolist() == [1, 5, 6]  # the token before each response token
    with pytest.raises(ValueError, match=r"rows \[0\] have pad tokens between real ones"):
        pack(torch.tensor([[1, 0, 1]]), torch.tensor([[1, 0, 1]]))
    with pytest.raises(ValueError, match=r"rows \[1\] have pad tokens between real ones"):
        pack(torch.ones(2, 4, dtype=torch.long), torch.tensor([[0, 1, 1, 1], [1, 0, 1, 1]]))
    with pytest.raises(ValueError, match=r"rows \[0, 2\] have none"):
        pack(ids, mask).response_sources(prompt_len=1)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logprobs_equal_padded_and_each_sequence_alone(policy, batch, attn):
    policy.set_attn_implementation(attn)
    try:
        kw = dict(device=CPU, top_k=20, top_p=0.9, entropy=True)
        padded, ent_padded = response_logprobs(policy, batch, 0.7, **kw)
        packed, ent_packed = response_logprobs(policy, batch, 0.7, packed=True, **kw)
    finally:
        policy.set_attn_implementation("sdpa")
    mask = batch.response_mask.bool()
    torch.testing.assert_close(packed[mask], padded[mask], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ent_packed[mask], ent_padded[mask], atol=2e-5, rtol=1e-5)
    assert packed[~mask].abs().max() == 0 and ent_packed[~mask].abs().max() == 0
    # a sequence alone (no neighbours, no padding) scores the same: nothing leaks across
    # the packed row's sequence boundaries
    for i in range(batch.size):
        real = batch.attention_mask[i].bool()
        alone = Batch(input_ids=batch.input_ids[i, real][None], attention_mask=torch.ones(1, int(real.sum())),
                      response_mask=torch.ones(1, int(mask[i].sum())), group_ids=torch.zeros(1))
        got = response_logprobs(policy, alone, 0.7, device=CPU, top_k=20, top_p=0.9)[0][0]
        torch.testing.assert_close(packed[i, mask[i]], got, atol=2e-5, rtol=1e-5)


def test_packing_without_confinement_would_differ(policy, batch):
    """The check above can fail: the same packed row with ONE position sequence (as if
    it were a single sequence) attends across boundaries and moves the log-probs."""
    packed = pack(batch.input_ids, batch.attention_mask)
    positions = torch.arange(packed.input_ids.shape[1])[None]
    with torch.no_grad():
        right = policy(**packed.model_inputs(CPU)).logits
        leaky = policy(input_ids=packed.input_ids, position_ids=positions, use_cache=False).logits
    second = slice(int(packed.lengths[0]), None)
    assert (right[0, second] - leaky[0, second]).abs().max() > 1e-2


def test_packed_gradients_equal_padded(policy, batch):
    """A PPO-like token-mean loss: the same gradient on every parameter."""
    adv = torch.linspace(-1, 1, batch.size)[:, None] * batch.response_mask
    n_tokens = batch.response_mask.sum()

    def grads(packed: bool) -> dict[str, torch.Tensor]:
        policy.zero_grad(set_to_none=True)
        logprobs, entropy = response_logprobs(policy, batch, 1.0, device=CPU, entropy=True, entropy_grad=True,
                                              packed=packed)
        loss = masked_sum(-adv * logprobs.exp() - 0.01 * entropy, batch.response_mask) / n_tokens
        loss.backward()
        return {n: p.grad.clone() for n, p in policy.named_parameters()}

    padded, packed = grads(False), grads(True)
    policy.zero_grad(set_to_none=True)
    assert padded.keys() == packed.keys()
    total = torch.cat([g.flatten() for g in padded.values()]).norm()
    diff = torch.cat([(packed[n] - padded[n]).flatten() for n in padded]).norm()
    assert total > 1e-3 and diff / total < 1e-5, (diff, total)


def test_packed_values_and_scores_equal_padded(scorer, batch):
    mask = batch.response_mask.bool()
    with torch.no_grad():
        values = response_values(scorer, batch, device=CPU)
        values_packed = response_values(scorer, batch, device=CPU, packed=True)
        scores = last_token_scores(scorer, batch, device=CPU)
        scores_packed = last_token_scores(scorer, batch, device=CPU, packed=True)
    torch.testing.assert_close(values_packed[mask], values[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores_packed, scores, atol=1e-5, rtol=1e-5)
    assert scores.std() > 1e-3  # the rows really differ (a broken gather would show)


def test_packing_pays_only_when_it_does_no_more_work():
    from rlhf.packing import packing_mode, packing_pays

    long_tail = torch.zeros(8, 100, dtype=torch.long)
    long_tail[:, :10] = 1
    long_tail[0] = 1  # one row at the full width: 170 real of 800 padded tokens
    assert packing_pays(long_tail, hidden_size=512)  # 170 (3072 + 170) <= 800 (3072 + 100)
    many = torch.zeros(64, 100, dtype=torch.long)
    many[:, :30] = 1  # 1920 real tokens in one row: its square attention outweighs the padding
    assert not packing_pays(many, hidden_size=0)  # 1920^2 > 64 * 100^2
    assert packing_pays(many, hidden_size=512)  # unless the projections dominate: 9.6M <= 20.3M
    full = torch.ones(8, 100, dtype=torch.long)
    full[:, :2] = 0  # prompt padding only: 784 real tokens, 784 (3072 + 784) > 800 (3072 + 100)
    assert not packing_pays(full, hidden_size=512)
    assert packing_pays(full, 512, "flash_attention_2")  # varlen attends within each sequence
    assert packing_mode("auto") == "auto" and packing_mode("never") is False and packing_mode("always") is True
    with pytest.raises(ValueError, match="train.packing"):
        packing_mode("sometimes")

"""DeepSpeed trainer roles on CPU (gloo) in Ray worker groups, with the tiny models.

Checks: compute_logprobs == a direct transformers forward; an actor update moves
log-probs the way the advantages say and gives the same weights on 1 rank, 2 ranks
ZeRO-2 and 2 ranks ZeRO-3 (fp32); the reference stays fixed; save/load restores
weights and optimizer state exactly; critic values move toward returns; reward-model
scores read at the last real token; failures and dead ranks surface as WorkerError.
Groups are module-scoped and shared; batches are built by hand from the tokenizer.
"""
from __future__ import annotations

import time

import pytest
import torch

from rlhf.algorithms import logprobs_from_logits, masked_mean
from rlhf.batch import Batch
from rlhf.config.schema import AlgorithmSection, ReferenceSection, TrainerSection, TrainSection

pytestmark = pytest.mark.integration

PAIRS = [("12+34=", "46"), ("5+6=", "11"), ("70+29=", "99"), ("3+4=", "7"),
         ("41+8=", "49"), ("66+13=", "79"), ("9+90=", "99"), ("25+25=", "50")]
ADVANTAGES = [1.0, -1.0, 0.5, 1.0, -0.5, 1.0, -1.0, 0.25]
# one mini-batch of all 8 sequences, 2 epochs = 2 optimizer steps; micro-batches of 2
TRAIN = TrainSection(mini_batch_size=8, micro_batch_size=2, ppo_epochs=2)
CPUS = 0.25


LR = 2e-4


def trainer_cfg(stage: int, lr: float = LR) -> TrainerSection:
    return TrainerSection(zero_stage=stage, lr=lr, grad_clip=1.0, num_cpus=CPUS)


def make_batch(tok, pairs) -> Batch:
    """Prompts left-padded, responses (digits + EOS) right-padded (rlhf/batch.py)."""
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p, _ in pairs]
    responses = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for _, r in pairs]
    P, R = max(map(len, prompts)), max(map(len, responses)) + 1  # + 1: every row has right padding
    ids = torch.full((len(pairs), P + R), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, P - len(p):P + len(r)] = torch.tensor(p + r)
        mask[i, P - len(p):P + len(r)] = 1
    return Batch(input_ids=ids, attention_mask=mask, response_mask=mask[:, P:].float(),
                 group_ids=torch.arange(len(pairs)))


@pytest.fixture(scope="module")
def paths(tiny):
    return {"policy": tiny["policy"], "scorer": tiny["scorer"]}


@pytest.fixture(scope="module")
def tok(paths):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(paths["policy"])


@pytest.fixture(scope="module")
def batch(tok):
    return make_batch(tok, PAIRS)


def _actor_group(ray_session, path, stage, workers, name="actor"):
    from workers.actor import ActorWorker
    from workers.group import WorkerGroup

    return WorkerGroup(ActorWorker, workers, num_cpus=CPUS, name=name, init_kwargs=dict(
        model_path=path, trainer_cfg=trainer_cfg(stage), algo_cfg=AlgorithmSection(), train_cfg=TRAIN,
        seed=0, dtype="fp32"))


@pytest.fixture(scope="module")
def shared_z2(ray_session, paths, tmp_path_factory):
    """A 2-rank ZeRO-2 actor shared by the module, and a checkpoint of its initial state."""
    group = _actor_group(ray_session, paths["policy"], stage=2, workers=2)
    start = str(tmp_path_factory.mktemp("actor_z2") / "start")
    group.run_all("save", start)
    yield group, start
    group.kill()


@pytest.fixture
def actor_z2(shared_z2):
    """The shared actor back at its initial weights and optimizer state, whatever ran
    before (tests may run in any order or alone)."""
    group, start = shared_z2
    group.run_all("load", start)
    return group


@pytest.fixture(scope="module")
def reference(ray_session, paths):
    from workers.group import WorkerGroup
    from workers.reference import ReferenceWorker

    group = WorkerGroup(ReferenceWorker, 1, num_cpus=CPUS, name="reference", init_kwargs=dict(
        model_path=paths["policy"], cfg=ReferenceSection(zero_stage=0), micro_batch_size=4, dtype="fp32",
        max_tokens=24))  # packed, in token-budget micro-batches (results back in row order)
    yield group
    group.kill()


def hf_logprobs(path, batch, temperature):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids()).logits
    return logprobs_from_logits(logits[:, batch.prompt_len - 1:-1], batch.responses, temperature)


def update_mismatch(weights, reference, initial) -> tuple[float, float]:
    """Relative L2 distance of two weight updates, and the largest elementwise difference.

    fp32 sums in another order differ by ~1e-7 relative; where a gradient is ~0 that
    noise can flip the sign of an Adam step (m / (sqrt(v) + eps)), so a few elements
    may differ by up to ~lr (seen: 56 of 16k in one q_proj under ZeRO-3, whole update
    within 1.3e-3). Adam also hides a constant gradient scale, so the callers compare
    the pre-clip gradient norms too.
    """
    diff = torch.cat([(weights[n] - reference[n]).flatten() for n in reference])
    step = torch.cat([(reference[n] - initial[n]).flatten() for n in reference])
    return (diff.norm() / step.norm()).item(), diff.abs().max().item()


def _with_advantages(batch, old_logprobs):
    adv = torch.tensor(ADVANTAGES)[:, None] * batch.response_mask
    return batch.replace(old_logprobs=old_logprobs, advantages=adv)


# ------------------------------------------------------------------ (b) logprobs
def test_compute_logprobs_matches_transformers(actor_z2, reference, paths, batch):
    expected = hf_logprobs(paths["policy"], batch, 0.7)
    got = actor_z2.run_split("compute_logprobs", batch, temperature=0.7)
    ref = reference.run_split("compute_logprobs", batch, temperature=0.7)
    mask = batch.response_mask.bool()
    assert got.shape == expected.shape == (8, batch.response_len)
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref[mask], expected[mask], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ (a) update
def test_actor_update_direction_and_same_weights_on_1_or_2_ranks_zero2_zero3(
        ray_session, actor_z2, paths, batch, tmp_path):
    from transformers import AutoModelForCausalLM

    single = _actor_group(ray_session, paths["policy"], stage=2, workers=1, name="actor1")
    zero3 = _actor_group(ray_session, paths["policy"], stage=3, workers=2, name="actor_z3")
    try:
        old = single.run_split("compute_logprobs", batch, temperature=1.0)
        torch.testing.assert_close(zero3.run_split("compute_logprobs", batch, temperature=1.0), old)
        train_batch = _with_advantages(batch, old)
        metrics = {name: group.gather(group.call_split("update", train_batch, temperature=1.0))[0]
                   for name, group in [("single", single), ("zero2", actor_z2), ("zero3", zero3)]}
        for m in metrics.values():
            assert {"actor/pg_loss", "actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/approx_kl",
                    "actor/entropy", "actor/grad_norm", "actor/lr"} <= set(m)
            assert m["actor/lr"] == pytest.approx(LR)
            assert abs(m["actor/pg_loss"] - metrics["single"]["actor/pg_loss"]) < 1e-5
            # the pre-clip gradient norm exposes any scale error (Adam's update would hide it)
            assert m["actor/grad_norm"] == pytest.approx(metrics["single"]["actor/grad_norm"], rel=1e-4)

        # positive advantages raise their tokens' log-probs, negative ones lower them
        new = single.run_split("compute_logprobs", batch, temperature=1.0)
        mask, adv = batch.response_mask, train_batch.advantages
        delta = new - old
        assert masked_mean(delta, mask * (adv > 0)) > 0 > masked_mean(delta, mask * (adv < 0)), delta
        surrogate = lambda lp: masked_mean(-adv * torch.exp(lp - old), mask)  # noqa: E731
        assert surrogate(new) < surrogate(old) - 1e-3

        # data parallel over 2 ranks (ZeRO-2 and ZeRO-3) == one rank on the same data
        reference_weights = single.run_all("full_weights")[0]
        initial = AutoModelForCausalLM.from_pretrained(paths["policy"], dtype=torch.float32).state_dict()
        moved = max((reference_weights[n] - initial[n]).abs().max().item() for n in reference_weights)
        assert moved > 1e-4
        for group in (actor_z2, zero3):
            weights = group.run_all("full_weights")[0]  # the ZeRO-3 ones gathered from 2 shards
            assert weights.keys() == reference_weights.keys()
            rel, worst = update_mismatch(weights, reference_weights, initial)
            assert rel < 1e-2, f"{group.role}: update differs by {rel:.2e} (relative), max |dw| {worst:.2e}"
            torch.testing.assert_close(group.run_split("compute_logprobs", batch, temperature=1.0), new,
                                       atol=1e-4, rtol=0)

        # HF export of the sharded (ZeRO-3) model loads in transformers with the same weights
        zero3.run_all("save_hf", str(tmp_path / "hf"))
        exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).state_dict()
        assert all(torch.equal(exported[name], value) for name, value in weights.items())
    finally:
        single.kill()
        zero3.kill()


# ------------------------------------------------------------------ (c2) on-policy update
def test_update_on_policy_equals_separate_logprob_pass(ray_session, paths, batch, tmp_path):
    """One epoch, one mini-batch: the update's own (detached) log-probs replace the
    compute_logprobs pass; same old log-probs, same metrics, same weights."""
    from workers.actor import ActorWorker
    from workers.group import WorkerGroup

    group = WorkerGroup(ActorWorker, 2, num_cpus=CPUS, name="on_policy", init_kwargs=dict(
        model_path=paths["policy"], trainer_cfg=trainer_cfg(2), algo_cfg=AlgorithmSection(),
        train_cfg=TrainSection(mini_batch_size=8, micro_batch_size=2, ppo_epochs=1), seed=0, dtype="fp32"))
    try:
        group.run_all("save", str(tmp_path / "start"))
        old = group.run_split("compute_logprobs", batch, temperature=1.0)
        separate = group.gather(group.call_split("update", _with_advantages(batch, old), temperature=1.0))[0]
        w_separate = group.run_all("full_weights")[0]

        group.run_all("load", str(tmp_path / "start"))
        results = group.gather(group.call_split("update_on_policy", _with_advantages(batch, None), temperature=1.0))
        fused, fused_old = results[0][0], torch.cat([r[1] for r in results])
        w_fused = group.run_all("full_weights")[0]

        torch.testing.assert_close(fused_old, old, atol=1e-6, rtol=0)  # rank order kept
        assert fused.keys() == separate.keys()
        for key, value in separate.items():
            assert fused[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
        assert fused["actor/pg_clipfrac"] == 0.0 and fused["actor/approx_kl"] == 0.0  # the ratio is exactly 1
        for name in w_separate:
            torch.testing.assert_close(w_fused[name], w_separate[name], atol=1e-6, rtol=0)
    finally:
        group.kill()


def test_later_epochs_reshuffle_mini_batches(ray_session, paths, batch):
    """2 epochs of 2 mini-batches == epoch 0 in rollout order, then the same rows in the
    order `epoch_permutation` gives; and that order is not the rollout order (a missing
    reshuffle makes the weights differ)."""
    from workers.actor import ActorWorker
    from workers.group import WorkerGroup

    def group_of(epochs, name):
        return WorkerGroup(ActorWorker, 1, num_cpus=CPUS, name=name, init_kwargs=dict(
            model_path=paths["policy"], trainer_cfg=trainer_cfg(2), algo_cfg=AlgorithmSection(),
            train_cfg=TrainSection(mini_batch_size=4, micro_batch_size=2, ppo_epochs=epochs), seed=0, dtype="fp32"))

    two, one = group_of(2, "epochs2"), group_of(1, "epochs1")
    try:
        train_batch = _with_advantages(batch, one.run_split("compute_logprobs", batch, temperature=1.0))
        two.gather(two.call_split("update", train_batch, temperature=1.0))
        one.gather(one.call_split("update", train_batch, temperature=1.0))  # epoch 0: 2 optimizer steps
        perm = one.run_all("epoch_permutation", batch.size, 1)[0]
        assert sorted(perm.tolist()) == list(range(8)) and perm[:4].sort().values.tolist() not in ([0, 1, 2, 3],
                                                                                                   [4, 5, 6, 7])
        one.gather(one.call_split("update", train_batch.index(perm), temperature=1.0))
        w_two, w_one = two.run_all("full_weights")[0], one.run_all("full_weights")[0]
        for name in w_two:
            torch.testing.assert_close(w_two[name], w_one[name], atol=1e-6, rtol=0)
    finally:
        two.kill()
        one.kill()


def test_share_cores_sets_the_workers_torch_threads(actor_z2, reference):
    import os

    cores = len(os.sched_getaffinity(0))
    assert reference.run_all("share_cores", 1) == [cores]
    assert reference.run_all("share_cores", 2) == [max(1, cores // 2)]
    assert reference.run_all("share_cores", 4 * cores) == [1]
    # the tiny policy (0.9M params) trains on one thread whatever the share
    assert actor_z2.run_all("share_cores", 1) == [1, 1]


def test_update_on_policy_refuses_several_epochs(actor_z2, batch):
    from workers.group import WorkerError

    with pytest.raises(WorkerError, match=r"update_on_policy needs train.ppo_epochs=1.*got 2 epoch"):
        actor_z2.gather(actor_z2.call_split("update_on_policy", _with_advantages(batch, None), temperature=1.0))


# ------------------------------------------------------------------ (c3) packing, token budgets
# long-tailed response lengths (1 to 14 digits + EOS): packing and budgets matter
TAIL_PAIRS = [("12+34=", "46"), ("5+6=", "11111111"), ("70+29=", "9"), ("3+4=", "7777"),
              ("41+8=", "49494949494949"), ("66+13=", "79"), ("9+90=", "99999"), ("25+25=", "5")]
BUDGET = 24


def test_packed_token_budget_updates_equal_padded_on_1_and_2_ranks(ray_session, paths, tok):
    """The same update padded (fixed micro-batches of 2) and packed in token-budget
    micro-batches (uneven counts of rows) on 1 rank and on 2 DeepSpeed ranks: same
    log-probs, loss, pre-clip gradient norm and weights; the on-policy variant returns
    its old log-probs in row order although it trains the rows in another order."""
    from workers.actor import ActorWorker
    from workers.group import WorkerGroup

    batch = make_batch(tok, TAIL_PAIRS)

    def group_of(workers, packing, name):
        budget = BUDGET if packing else 0
        train = TrainSection(mini_batch_size=8, micro_batch_size=2, ppo_epochs=1,
                             packing="always" if packing else "never",
                             max_tokens_per_micro_batch=budget, max_tokens_per_infer_batch=budget)
        return WorkerGroup(ActorWorker, workers, num_cpus=CPUS, name=name, init_kwargs=dict(
            model_path=paths["policy"], trainer_cfg=trainer_cfg(2), algo_cfg=AlgorithmSection(),
            train_cfg=train, seed=0, dtype="fp32"))

    padded, packed1, packed2 = group_of(1, False, "padded1"), group_of(1, True, "packed1"), group_of(2, True, "packed2")
    packed2.balance_rows = True  # as rlhf.roles sets it for packed runs: ranks get rows by real tokens
    try:
        mask = batch.response_mask.bool()
        old = padded.run_split("compute_logprobs", batch, temperature=1.0)
        for group in (packed1, packed2):
            torch.testing.assert_close(group.run_split("compute_logprobs", batch, temperature=1.0)[mask], old[mask],
                                       atol=2e-5, rtol=1e-5)
        # the plans: within the budget, not the fixed 2-row chunks, as many on both ranks
        costs = batch.attention_mask.sum(-1)
        plan1 = packed1.gather(packed1.call_split("train_micro_batches", batch))[0]
        refs = packed2.call_split("train_micro_batches", batch)
        plans2 = packed2.gather(refs)
        # a rank's plan indexes its own rows: the batch rows of rank r are its share of refs.order
        for rows, plan in [(torch.arange(batch.size), plan1), *zip(refs.order.split(batch.size // 2), plans2)]:
            assert all(int(costs[rows[idx]].sum()) <= BUDGET for idx in plan)
        assert sorted(len(idx) for idx in plan1) != [2, 2, 2, 2]
        assert len(plans2[0]) == len(plans2[1])

        train_batch = _with_advantages(batch, old)
        m_padded = padded.gather(padded.call_split("update", train_batch, temperature=1.0))[0]
        m_packed1 = packed1.gather(packed1.call_split("update", train_batch, temperature=1.0))[0]
        refs = packed2.call_split("update_on_policy", _with_advantages(batch, None), temperature=1.0)
        rank_tokens = [int(costs[i].sum()) for i in refs.order.split(batch.size // 2)]
        assert max(rank_tokens) - min(rank_tokens) <= int(costs.max())  # dealt by tokens, not contiguous chunks
        results = packed2.gather(refs)
        m_packed2, old2 = results[0][0], packed2.rows_in_order(refs, [r[1] for r in results])
        torch.testing.assert_close(old2[mask], old[mask], atol=2e-5, rtol=1e-5)
        for m in (m_packed1, m_packed2):
            assert m["actor/pg_loss"] == pytest.approx(m_padded["actor/pg_loss"], abs=1e-6)
            assert m["actor/entropy"] == pytest.approx(m_padded["actor/entropy"], rel=1e-5)
            assert m["actor/grad_norm"] == pytest.approx(m_padded["actor/grad_norm"], rel=1e-4)

        from transformers import AutoModelForCausalLM

        initial = AutoModelForCausalLM.from_pretrained(paths["policy"], dtype=torch.float32).state_dict()
        w_padded = padded.run_all("full_weights")[0]
        new = padded.run_split("compute_logprobs", batch, temperature=1.0)
        assert (new - old)[mask].abs().max() > 1e-3
        for group in (packed1, packed2):
            rel, worst = update_mismatch(group.run_all("full_weights")[0], w_padded, initial)
            assert rel < 1e-2, f"{group.role}: update differs by {rel:.2e} (relative), max |dw| {worst:.2e}"
            torch.testing.assert_close(group.run_split("compute_logprobs", batch, temperature=1.0)[mask], new[mask],
                                       atol=1e-4, rtol=0)
    finally:
        for group in (padded, packed1, packed2):
            group.kill()


# ------------------------------------------------------------------ (d) reference
def test_reference_logprobs_stay_fixed_across_actor_updates(actor_z2, reference, paths, batch):
    before = reference.run_split("compute_logprobs", batch, temperature=1.0)
    old = actor_z2.run_split("compute_logprobs", batch, temperature=1.0)
    actor_z2.gather(actor_z2.call_split("update", _with_advantages(batch, old), temperature=1.0))
    after_actor = actor_z2.run_split("compute_logprobs", batch, temperature=1.0)
    after = reference.run_split("compute_logprobs", batch, temperature=1.0)
    assert (after_actor - old).abs().max() > 1e-3
    assert torch.equal(before, after)
    mask = batch.response_mask.bool()  # packed: pad cells are 0
    torch.testing.assert_close(after[mask], hf_logprobs(paths["policy"], batch, 1.0)[mask], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ (g) checkpoints
def test_save_load_restores_weights_and_optimizer_state(actor_z2, batch, tmp_path):
    old = actor_z2.run_split("compute_logprobs", batch, temperature=1.0)
    train_batch = _with_advantages(batch, old)
    actor_z2.run_all("save", str(tmp_path / "ckpt"))
    saved = actor_z2.run_all("full_weights")[0]
    first = actor_z2.gather(actor_z2.call_split("update", train_batch, temperature=1.0))[0]
    w_first = actor_z2.run_all("full_weights")[0]

    actor_z2.run_all("load", str(tmp_path / "ckpt"))
    restored = actor_z2.run_all("full_weights")[0]
    assert all(torch.equal(restored[n], saved[n]) for n in saved)
    second = actor_z2.gather(actor_z2.call_split("update", train_batch, temperature=1.0))[0]
    w_second = actor_z2.run_all("full_weights")[0]
    # identical weights after the same update: Adam moments and step count were restored
    # (from fresh moments the first Adam step would move every weight by ~lr instead)
    assert all(torch.equal(w_first[n], w_second[n]) for n in w_first)
    assert first == second


# ------------------------------------------------------------------ (f) errors
def test_worker_error_names_role_rank_and_method_quickly(actor_z2, batch):
    from workers.group import WorkerError

    bad = batch.replace(input_ids=batch.input_ids.clone())
    bad.input_ids[batch.size // 2:, batch.prompt_len] = 10_000  # out of vocabulary, a real token of rank 1's half only
    started = time.monotonic()
    with pytest.raises(WorkerError, match=r"actor rank 1 failed in compute_logprobs") as err:
        actor_z2.run_split("compute_logprobs", bad, temperature=1.0)
    assert not err.value.died  # a raising verb is not a dead process: no restart
    assert time.monotonic() - started < 30
    # the group still works (compute_logprobs has no collectives under ZeRO-2)
    assert actor_z2.run_split("compute_logprobs", batch, temperature=1.0).shape == (8, batch.response_len)


# ------------------------------------------------------------------ (c) critic
def test_value_model_reuses_scorer_head_and_seeds_new_head(paths):
    from transformers import AutoModelForSequenceClassification

    from workers.forwards import load_value_model

    scorer = AutoModelForSequenceClassification.from_pretrained(paths["scorer"], dtype=torch.float32)
    from_scorer = load_value_model(paths["scorer"], seed=0)
    assert from_scorer.score.bias is None
    assert torch.equal(from_scorer.score.weight, scorer.score.weight)
    assert torch.equal(from_scorer.model.embed_tokens.weight, scorer.model.embed_tokens.weight)
    a, b, c = (load_value_model(paths["policy"], seed=s).score.weight for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_critic_values_move_toward_returns(ray_session, paths, batch):
    from workers.critic import CriticWorker
    from workers.group import WorkerGroup

    critic = WorkerGroup(CriticWorker, 1, num_cpus=CPUS, name="critic", init_kwargs=dict(
        model_path=paths["scorer"], trainer_cfg=trainer_cfg(2, lr=1e-3), algo_cfg=AlgorithmSection(value_clip=0.2),
        train_cfg=TRAIN, seed=0, dtype="fp32"))
    try:
        mask = batch.response_mask
        returns = torch.tensor(ADVANTAGES)[:, None] * mask
        errors, metrics = [], None
        for _ in range(4):
            values = critic.run_split("compute_values", batch)
            assert values.shape == (8, batch.response_len)
            errors.append(masked_mean((values - returns).square(), mask).item())
            metrics = critic.gather(critic.call_split("update", batch.replace(values=values, returns=returns)))[0]
        assert {"critic/vf_loss", "critic/vf_clipfrac", "critic/explained_var", "critic/values_mean",
                "critic/grad_norm"} <= set(metrics)
        final = masked_mean((critic.run_split("compute_values", batch) - returns).square(), mask).item()
        assert final < 0.5 * errors[0], (errors, final)
    finally:
        critic.kill()


# ------------------------------------------------------------------ (e) reward model
@pytest.fixture(scope="module")
def reward_model(ray_session, paths):
    from workers.group import WorkerGroup
    from workers.reward_model import RewardModelWorker

    group = WorkerGroup(RewardModelWorker, 1, num_cpus=CPUS, name="reward_model",
                        init_kwargs=dict(model_path=paths["scorer"], micro_batch_size=4, dtype="fp32",
                                         max_tokens=24))
    yield group
    group.kill()


def test_reward_model_scores_at_last_real_token(reward_model, paths, batch):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(paths["scorer"], dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             position_ids=batch.position_ids()).last_hidden_state
        last = batch.attention_mask.shape[1] - 1 - batch.attention_mask.flip(-1).argmax(-1)
        expected = model.score(hidden[torch.arange(batch.size), last])[:, 0]
    got = reward_model.run_split("score", batch)
    assert got.shape == (batch.size,)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_dead_rank_surfaces_as_worker_error(reward_model, batch):
    import ray

    from workers.group import WorkerError

    ray.kill(reward_model.actors[0], no_restart=True)
    started = time.monotonic()
    with pytest.raises(WorkerError, match=r"reward_model rank 0 died in score") as err:
        reward_model.run_split("score", batch)
    assert err.value.died
    assert time.monotonic() - started < 30

"""LoRA (actor.lora) on the DeepSpeed trainers and the vLLM engine, with the tiny policy.

Checks: at ZeRO 0, 2 (2 ranks) and 3 (2 ranks) only the adapters train and only they
carry Adam moments, the base weights never move, and one update gives the same adapter
on every stage; the actor's reference log-probs (adapters disabled) equal a separate
reference worker's; the exported adapter (peft) and merged model (transformers) score
like the actor; the engine serves each synced adapter as a new LoRA version and its
log-probs match the actor's; bad input is refused naming the key.
"""
from __future__ import annotations

import pytest
import torch

from rlhf.batch import Batch
from rlhf.config.schema import AlgorithmSection, LoRASection, TrainerSection
from tests.workers.test_trainers import (  # noqa: F401 (fixtures)
    CPUS, TRAIN, _with_advantages, batch, paths, reference, tok, update_mismatch)

pytestmark = pytest.mark.integration

LORA = LoRASection(rank=4, alpha=8.0)
LR = 1e-2  # adapters start at B = 0: a large step so the update is visible


def _lora_actor(ray_session, path, stage, workers, name):
    from workers.actor import ActorWorker
    from workers.group import WorkerGroup

    cfg = TrainerSection(zero_stage=stage, lr=LR, grad_clip=1.0, num_cpus=CPUS, lora=LORA)
    return WorkerGroup(ActorWorker, workers, num_cpus=CPUS, name=name, init_kwargs=dict(
        model_path=path, trainer_cfg=cfg, algo_cfg=AlgorithmSection(), train_cfg=TRAIN, seed=0, dtype="fp32"))


@pytest.fixture(scope="module")
def lora_z2(ray_session, paths):  # noqa: F811
    group = _lora_actor(ray_session, paths["policy"], stage=2, workers=2, name="lora_z2")
    yield group
    group.kill()


@pytest.fixture(scope="module")
def trained_z2(lora_z2, batch):  # noqa: F811
    """lora_z2 after one update (2 epochs = 2 optimizer steps); returns the old log-probs."""
    old = lora_z2.run_split("compute_logprobs", batch, temperature=1.0)
    lora_z2.gather(lora_z2.call_split("update", _with_advantages(batch, old), temperature=1.0))
    return old


def _batch_of(tok, prompts: list[list[int]], responses: list[list[int]]) -> Batch:
    """Token ids in the rlhf.batch layout (prompts left-padded, responses right-padded)."""
    P, R = max(map(len, prompts)), max(map(len, responses))
    ids = torch.full((len(prompts), P + R), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, P - len(p):P + len(r)] = torch.tensor(list(p) + list(r))
        mask[i, P - len(p):P + len(r)] = 1
    return Batch(input_ids=ids, attention_mask=mask, response_mask=mask[:, P:].float(),
                 group_ids=torch.arange(len(prompts)))


def _base_weights(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()


def test_only_adapters_train_at_zero_0_2_3(ray_session, lora_z2, trained_z2, paths, batch):  # noqa: F811
    base = _base_weights(paths["policy"])
    adapter_z2 = lora_z2.run_all("adapter_weights")[0]
    counts = lora_z2.run_all("parameter_counts")
    adapter_elements = sum(t.numel() for t in adapter_z2.values())
    # rank 4, per layer: q, k, v, o (128 -> 128) and gate, up, down (128 <-> 384); 4 layers
    assert adapter_elements == counts[0]["trainable"] == 4 * (4 * 4 * 256 + 3 * 4 * 512)
    assert counts[0]["total"] == sum(t.numel() for t in base.values()) + adapter_elements
    # ZeRO-2 shards the moments: the two ranks together hold one per adapter element
    assert sum(c["optimizer_moments"] for c in counts) == adapter_elements
    # the B matrices moved from 0; the base weights (merged export minus deltas) did not
    assert max(t.abs().max().item() for n, t in adapter_z2.items() if "lora_B" in n) > 1e-3
    new = lora_z2.run_split("compute_logprobs", batch, temperature=1.0)
    assert (new - trained_z2).abs().max() > 1e-2

    for stage, workers in ((0, 1), (3, 2)):
        group = _lora_actor(ray_session, paths["policy"], stage=stage, workers=workers, name=f"lora_z{stage}")
        try:
            initial = group.run_all("adapter_weights")[0]  # A seeded alike at every stage, B = 0
            assert initial.keys() == adapter_z2.keys()
            old = group.run_split("compute_logprobs", batch, temperature=1.0)
            torch.testing.assert_close(old, trained_z2)  # same base, B = 0: the base model's
            group.gather(group.call_split("update", _with_advantages(batch, old), temperature=1.0))
            counts = group.run_all("parameter_counts")
            assert counts[0]["trainable"] == adapter_elements
            assert sum(c["optimizer_moments"] for c in counts) == adapter_elements, stage
            adapter = group.run_all("adapter_weights")[0]
            assert adapter.keys() == adapter_z2.keys()
            # same update (fp32 sums in another order: ~1e-7 relative, see update_mismatch)
            rel, worst = update_mismatch(adapter, adapter_z2, initial)
            assert rel < 1e-2, f"ZeRO-{stage}: adapter update differs by {rel:.2e}, max {worst:.2e}"
            torch.testing.assert_close(group.run_split("compute_logprobs", batch, temperature=1.0), new,
                                       atol=1e-4, rtol=0)
            merged = dict(group.run_all("merged_weights")[0])
            assert merged.keys() == base.keys()
            moved = [n for n in base if not torch.equal(merged[n], base[n])]
            assert moved and all(".layers." in n and n.endswith("proj.weight") for n in moved)
        finally:
            group.kill()


def test_reference_from_disabled_adapters_equals_reference_worker(lora_z2, trained_z2, reference, batch):  # noqa: F811
    ref_worker = reference.run_split("compute_logprobs", batch, temperature=0.7)
    from_actor = lora_z2.run_split("compute_ref_logprobs", batch, temperature=0.7)
    mask = batch.response_mask.bool()  # the reference worker packs: its pad cells are 0
    torch.testing.assert_close(from_actor[mask], ref_worker[mask], atol=1e-5, rtol=1e-5)
    # and the adapters are back on afterwards: the trained policy differs from the base
    policy = lora_z2.run_split("compute_logprobs", batch, temperature=0.7)
    assert (policy - from_actor)[mask].abs().max() > 1e-2


def test_exported_adapter_and_merged_model_score_like_the_actor(lora_z2, trained_z2, paths, batch, tmp_path):  # noqa: F811
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tests.workers.test_trainers import hf_logprobs

    expected = lora_z2.run_split("compute_logprobs", batch, temperature=1.0)
    mask = batch.response_mask.bool()
    lora_z2.run_all("save_adapter", str(tmp_path / "adapter"))
    lora_z2.run_all("save_hf", str(tmp_path / "merged"))
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json",
                                                                         "adapter_model.safetensors"]
    base = AutoModelForCausalLM.from_pretrained(paths["policy"], dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        logits = with_adapter(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              position_ids=batch.position_ids()).logits
    from rlhf.algorithms import logprobs_from_logits

    got = logprobs_from_logits(logits[:, batch.prompt_len - 1:-1], batch.responses, 1.0)
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-5, rtol=1e-5)
    merged = hf_logprobs(str(tmp_path / "merged"), batch, 1.0)
    torch.testing.assert_close(merged[mask], expected[mask], atol=1e-4, rtol=1e-4)


def test_engine_serves_each_synced_adapter_as_a_new_lora_version(ray_session, lora_z2, trained_z2, paths,  # noqa: F811
                                                                  batch, tok):  # noqa: F811
    """Adapter-only sync into a LoRA-enabled engine: versions 1, 2 loaded by path, the
    oldest removed; the engine's log-probs of the batch match the actor's."""
    import ray

    from rlhf.config.schema import RolloutSection
    from workers.rollout import RolloutWorker

    cfg = RolloutSection(memory_fraction=0.1, kv_cache_gib=0.5, num_cpus=CPUS, dtype="float32")
    engine = ray.remote(RolloutWorker).options(num_cpus=CPUS).remote(paths["policy"], cfg, seed=0,
                                                                     lora_rank=LORA.rank)
    try:
        lora_z2.run_all("connect_rollout", [engine], "auto", 1 << 20, "float32")
        stats = []
        for version in (1, 2, 3):
            stats.append(lora_z2.run_all("push_weights", version)[0])
        adapter_bytes = sum(t.nbytes for t in lora_z2.run_all("adapter_weights")[0].values())
        assert [s["sync/bytes"] for s in stats] == [adapter_bytes] * 3
        assert ray.get(engine.weight_version.remote()) == 3
        loras = ray.get(engine.__ray_call__.remote(lambda w: sorted(w.llm.llm_engine.list_loras())))
        assert loras == [2, 3]  # version 1 removed
        # the engine's sampled log-probs (T = 1) == the actor's on those samples
        P = batch.prompt_len
        prompts = [row[m.bool()].tolist() for row, m in zip(batch.input_ids[:, :P], batch.attention_mask[:, :P])]
        out = ray.get(engine.generate.remote(prompts, n=2, temperature=1.0, max_new_tokens=4, seed=1))
        assert out["weight_version"] == 3 and len(out["response_ids"]) == 16
        sampled = _batch_of(tok, [prompts[i // 2] for i in range(16)], out["response_ids"])
        expected = lora_z2.run_split("compute_logprobs", sampled, temperature=1.0)
        diff = torch.cat([(torch.tensor(lp) - expected[i, :len(lp)]).abs() for i, lp in enumerate(out["logprobs"])])
        assert diff.mean() < 1e-3 and diff.max() < 1e-2, diff
        # the adapter changed the policy: the base model scores those samples differently
        base = lora_z2.run_split("compute_ref_logprobs", sampled, temperature=1.0)
        assert (base - expected).abs().max() > 1e-2
        with pytest.raises(ray.exceptions.RayTaskError, match="score_sequences with a LoRA adapter"):
            ray.get(engine.score_sequences.remote(prompts[:1], [[1]]))
    finally:
        ray.get(engine.shutdown.remote())
        ray.kill(engine)


def test_bad_lora_input_is_refused_with_the_key(paths):  # noqa: F811
    from rlhf.config import ConfigError, load_config
    from rlhf.lora import check_lora

    with pytest.raises(ConfigError, match=r"actor.lora.rank' must be >= 0"):
        load_config(None, ["actor.lora.rank=-1"])
    with pytest.raises(ConfigError, match=r"actor.lora.target_modules'.*no module \['qkv'\].*has \['down_proj'"):
        check_lora(LoRASection(rank=4, target_modules=["qkv"]), paths["policy"], "actor.lora")
    with pytest.raises(ConfigError, match=r"critic.lora.target_modules'.*no module \['input_layernorm'\]"):
        check_lora(LoRASection(rank=4, target_modules=["input_layernorm"]), paths["policy"], "critic.lora",
                   value_head=True)


def test_critic_lora_trains_adapters_and_the_whole_value_head(ray_session, paths, batch):  # noqa: F811
    """critic.lora: adapters on the backbone, the value head (`score`) fully trainable;
    the values still move toward the returns."""
    from rlhf.algorithms import masked_mean
    from workers.critic import CriticWorker
    from workers.group import WorkerGroup

    cfg = TrainerSection(zero_stage=2, lr=1e-2, grad_clip=1.0, num_cpus=CPUS, lora=LORA)
    critic = WorkerGroup(CriticWorker, 1, num_cpus=CPUS, name="lora_critic", init_kwargs=dict(
        model_path=paths["policy"], trainer_cfg=cfg, algo_cfg=AlgorithmSection(value_clip=0.2), train_cfg=TRAIN,
        seed=0, dtype="fp32"))
    try:
        mask = batch.response_mask
        returns = torch.linspace(-1, 1, 8)[:, None] * mask
        first = None
        for _ in range(4):
            values = critic.run_split("compute_values", batch)
            first = masked_mean((values - returns).square(), mask).item() if first is None else first
            critic.gather(critic.call_split("update", batch.replace(values=values, returns=returns)))
        final = masked_mean((critic.run_split("compute_values", batch) - returns).square(), mask).item()
        assert final < 0.5 * first, (first, final)
        counts = critic.run_all("parameter_counts")[0]
        adapters = 4 * (4 * 4 * 256 + 3 * 4 * 512)
        assert counts["trainable"] == adapters + 128  # + the value head (hidden 128 -> 1, no bias)
        assert counts["optimizer_moments"] == counts["trainable"]
    finally:
        critic.kill()

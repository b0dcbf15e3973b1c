"""Fixtures of the worker tests: ONE vLLM engine (a Ray actor) for the whole session,
the tiny policy in transformers, and a transformers scorer laid out like rlhf.batch."""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session")
def policy_path(tiny):
    return tiny["policy"]


@pytest.fixture(scope="session")
def tokenizer(policy_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(policy_path)


@pytest.fixture(scope="session")
def hf_policy(policy_path):
    """The tiny policy in transformers, fp32, eval mode (do not mutate: copy first)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def prompt_ids(tokenizer):
    """Eight arithmetic prompts as token ids (no padding)."""
    texts = ["37+45=", "12+8=", "90+9=", "5+66=", "41+41=", "73+18=", "3+4=", "58+27="]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


@pytest.fixture(scope="session")
def rollout_worker(ray_session, policy_path):
    """One RolloutWorker actor (one vLLM engine) reused by every test of the session."""
    import ray

    from rlhf.config.schema import RolloutSection
    from workers.rollout import RolloutWorker

    # RLHF_TEST_ROLLOUT_DTYPE=bfloat16 runs the AVX-512 machines' engine dtype on any CPU.
    dtype = os.environ.get("RLHF_TEST_ROLLOUT_DTYPE", "auto")
    cfg = RolloutSection(memory_fraction=0.1, kv_cache_gib=1.0, num_cpus=0.5, dtype=dtype)
    actor = ray.remote(**RolloutWorker.RAY_OPTIONS)(RolloutWorker).options(num_cpus=cfg.num_cpus).remote(
        policy_path, cfg, seed=0)
    assert ray.get(actor.ready.remote())
    yield actor
    ray.kill(actor)


# |vLLM - transformers| log-prob limits (mean, max) by engine dtype. The reference is
# transformers in fp32 on the weights rounded to the engine's dtype (hf_policy_as_engine,
# _as_synced), so what is left is the engine's arithmetic. fp32: agreement to rounding.
# bf16: activations rounded to bf16 between ops (fp32 accumulation) move log-probs of the
# kit's many low-probability tokens; measured with RLHF_TEST_ROLLOUT_DTYPE=bfloat16 on the
# AVX2-only AMD EPYC (emulated bf16), kit tiny-1ffa92bedf6d: perturbed policies after a
# sync (seeds 1, 2, 3) mean 0.030-0.055, max 0.37-0.44; unperturbed score_sequences mean
# 0.039, max 0.22; sampled at T=0.7 mean 0.012, max 0.20. Limits: ~1.8x the worst. A
# skipped sync measures mean 1.6-2.3, max 7.9-10.8; partial syncs are caught exactly by
# the weight digests (assert_engine_holds), not by these limits.
LOGPROB_LIMITS = {torch.float32: (1e-3, 1e-2), torch.bfloat16: (0.1, 0.8)}


@pytest.fixture(scope="session")
def engine_dtype(rollout_worker) -> torch.dtype:
    """The dtype the session's engine holds its weights in ("auto": bf16 only where native)."""
    import ray

    return getattr(torch, ray.get(rollout_worker.engine_info.remote())["dtype"])


@pytest.fixture(scope="session")
def logprob_limits(engine_dtype) -> tuple[float, float]:
    return LOGPROB_LIMITS[engine_dtype]


def as_engine_weights(model, dtype: torch.dtype):
    """`model` with its weights rounded to `dtype` (what the engine holds), computing in fp32:
    the log-prob reference whose error model matches the engine's weights."""
    import copy

    return copy.deepcopy(model).to(dtype).float().eval()


@pytest.fixture(scope="session")
def hf_policy_as_engine(hf_policy, engine_dtype):
    """The tiny policy with its weights rounded to the engine's dtype, fp32 compute."""
    return as_engine_weights(hf_policy, engine_dtype)


def engine_weight_digests(rollout_worker) -> dict[str, str]:
    """{HF name: digest} of the weights the session's engine computes with (its dtype)."""
    import ray

    return ray.get(rollout_worker.__ray_call__.remote(
        lambda worker: worker.llm.collective_rpc("rlhf_weight_digests")[0]))


def assert_engine_holds(rollout_worker, state: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Every tensor of `state`, cast to `dtype`, is bit-identical in the engine (a partial
    or skipped sync fails here in any dtype)."""
    from workers.vllm_extension import tensor_digest

    got = engine_weight_digests(rollout_worker)
    assert set(got) == set(state), sorted(set(got) ^ set(state))
    wrong = sorted(n for n, t in state.items() if tensor_digest(t, dtype) != got[n])
    assert not wrong, f"{len(wrong)}/{len(state)} engine tensors differ from the ones sent: {wrong[:5]}"


def hf_response_logprobs(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int,
                         temperature: float = 1.0) -> list[list[float]]:
    """Trainer-side log-probs of `responses`, in the rlhf.batch layout: prompts
    left-padded, responses right-padded, position ids counting real tokens."""
    from rlhf.algorithms import logprobs_from_logits
    from rlhf.batch import Batch

    P, R = max(map(len, prompts)), max(1, max(map(len, responses)))
    ids = torch.full((len(prompts), P + R), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, P - len(p):P + len(r)] = torch.tensor(list(p) + list(r))
        mask[i, P - len(p):P + len(r)] = 1
    batch = Batch(input_ids=ids, attention_mask=mask, response_mask=mask[:, P:].float(),
                  group_ids=torch.arange(len(prompts)))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=batch.position_ids()).logits
    lp = logprobs_from_logits(logits[:, P - 1:-1], batch.responses, temperature)
    return [lp[i, :len(r)].tolist() for i, r in enumerate(responses)]


def abs_diffs(a: list[list[float]], b: list[list[float]]) -> torch.Tensor:
    """Flat |a - b| over ragged lists of equal shapes."""
    assert [len(x) for x in a] == [len(y) for y in b]
    return (torch.tensor([v for x in a for v in x]) - torch.tensor([v for y in b for v in y])).abs()


@pytest.fixture(scope="session")
def hf_scorer():
    return hf_response_logprobs


@pytest.fixture(scope="session")
def diffs():
    return abs_diffs


@pytest.fixture(scope="session")
def engine_holds():
    return assert_engine_holds

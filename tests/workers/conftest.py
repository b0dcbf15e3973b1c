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
    actor = ray.remote(RolloutWorker).options(num_cpus=cfg.num_cpus).remote(policy_path, cfg, seed=0)
    assert ray.get(actor.ready.remote())
    yield actor
    ray.kill(actor)


# |vLLM - transformers| log-prob limits (mean, max) by engine dtype; the reference runs
# in fp32. An fp32 engine agrees to rounding; a bf16 one within its arithmetic (on a
# strongly perturbed tiny policy bf16 alone moved log-probs by up to ~1 nat: transformers'
# own bf16 forward against its fp32 one, AVX2-only EPYC, mean 0.067, max 1.11).
LOGPROB_LIMITS = {torch.float32: (1e-3, 1e-2), torch.bfloat16: (0.02, 0.25)}


@pytest.fixture(scope="session")
def engine_dtype(rollout_worker) -> torch.dtype:
    """The dtype the session's engine holds its weights in ("auto": bf16 only where native)."""
    import ray

    return getattr(torch, ray.get(rollout_worker.engine_info.remote())["dtype"])


@pytest.fixture(scope="session")
def logprob_limits(engine_dtype) -> tuple[float, float]:
    return LOGPROB_LIMITS[engine_dtype]


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

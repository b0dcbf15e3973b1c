"""rollout.partial resume on the session's vLLM engine: a weight update arrives while a
generation runs; the engine pauses between steps, loads, and resumes each request on the
new weights. Per-token versions say which weights sampled each token, and the tokens'
log-probs prove it (transformers on the old and the new weights)."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import ray
import torch

from workers.partial import UPDATE_GROUP
from workers.weight_sync import WeightSender

pytestmark = pytest.mark.integration
ENVS = str(Path(__file__).with_name("agent_envs.py"))
LENGTH = 300  # tokens per response (ignore_eos): long enough to be in flight when the update comes


def _perturbed(model, seed: int, scale: float = 0.5):
    noisy = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * p.std().clamp(min=1e-2) * scale)
    return noisy


@pytest.fixture
def resume_sender(rollout_worker, hf_policy):
    """A sender whose calls run in the engine's update group (as with rollout.partial resume);
    the original weights are synced back afterwards."""
    info = ray.get(rollout_worker.engine_info.remote())
    sender = WeightSender("shm")  # one bucket
    sender.connect([rollout_worker], infos=[{**info, "update_group": UPDATE_GROUP}])
    yield sender
    sender.send(iter(hf_policy.state_dict().items()), version=ray.get(rollout_worker.weight_version.remote()) + 1)
    sender.close()


def _wait_until_generating(rollout_worker, ref, seconds: float = 0.5):
    time.sleep(seconds)
    assert not ray.wait([ref], timeout=0)[0], "the generation ended before the update: make it longer"


def test_update_mid_generation_resumes_requests_on_the_new_weights(rollout_worker, resume_sender, hf_policy,
                                                                   hf_policy_as_engine, prompt_ids, tokenizer,
                                                                   hf_scorer, diffs, logprob_limits, engine_dtype):
    noisy = _perturbed(hf_policy, seed=5)
    prompts = prompt_ids[:4]
    v0 = ray.get(rollout_worker.weight_version.remote())
    ref = rollout_worker.generate.remote(prompts, n=2, temperature=1.0, max_new_tokens=LENGTH, seed=7,
                                         ignore_eos=True)
    _wait_until_generating(rollout_worker, ref)
    stats = resume_sender.send(iter(noisy.state_dict().items()), version=v0 + 1)
    assert not ray.wait([ref], timeout=0)[0]  # the sync did not wait for the generation
    out = ray.get(ref)
    assert out["weight_version"] == v0 + 1 and stats["sync/buckets"] == 1
    old_part, new_part = [], []
    for ids, lps, versions in zip(out["response_ids"], out["logprobs"], out["token_versions"]):
        assert len(ids) == len(lps) == len(versions) == LENGTH  # the resumed request kept its budget
        switch = versions.index(v0 + 1)  # every request was in flight: old tokens, then new ones
        assert 0 < switch and set(versions[:switch]) == {v0} and set(versions[switch:]) == {v0 + 1}
        old_part.append(switch)
    # the log-probs of each part are those of the weights its version names
    plist = [prompts[k // 2] for k in range(len(out["response_ids"]))]
    old_want = hf_scorer(hf_policy_as_engine, plist, out["response_ids"], tokenizer.pad_token_id)
    noisy_engine = copy.deepcopy(noisy).to(engine_dtype).float().eval()
    new_want = hf_scorer(noisy_engine, plist, out["response_ids"], tokenizer.pad_token_id)
    for k, (lps, switch) in enumerate(zip(out["logprobs"], old_part)):
        new_part.append((lps[switch:], new_want[k][switch:], old_want[k][switch:]))
        d = diffs([lps[:switch]], [old_want[k][:switch]])
        assert d.mean() < logprob_limits[0] and d.max() < logprob_limits[1], (k, d.mean(), d.max())
    d_new = diffs([p[0] for p in new_part], [p[1] for p in new_part])
    d_old = diffs([p[0] for p in new_part], [p[2] for p in new_part])
    assert d_new.mean() < logprob_limits[0] and d_new.max() < logprob_limits[1], (d_new.mean(), d_new.max())
    assert d_old.mean() > 10 * logprob_limits[0]  # the old weights would not have given these


def test_a_trajectory_waiting_on_its_tool_never_blocks_the_sync(rollout_worker, resume_sender, hf_policy,
                                                                 prompt_ids, tokenizer):
    noisy = _perturbed(hf_policy, seed=6)
    v0 = ray.get(rollout_worker.weight_version.remote())
    samples = [{"prompt": tokenizer.decode(p), "label": None} for p in prompt_ids[:2]]
    agent = {"environment": f"{ENVS}:SlowTool", "max_turns": 3, "max_total_tokens": 64, "stop": [],
             "tool_timeout_s": 10.0}
    ref = rollout_worker.run_agent.remote(prompt_ids[:2], samples, n=2, temperature=1.0, max_new_tokens=6, seed=3,
                                          agent=agent)
    _wait_until_generating(rollout_worker, ref, seconds=1.0)  # the first turns are written; tools sleep 3 s
    t0 = time.perf_counter()
    resume_sender.send(iter(noisy.state_dict().items()), version=v0 + 1)
    assert time.perf_counter() - t0 < 1.5 and not ray.wait([ref], timeout=0)[0]
    trajectories = ray.get(ref)["trajectories"]
    for t in trajectories:
        policy = [v for v, m in zip(t["token_versions"], t["policy_mask"]) if m]
        assert t["turns"] == 2 and policy[0] == v0 and policy[-1] == v0 + 1  # turn 2 after the update
        assert all(v == -1 for v, m in zip(t["token_versions"], t["policy_mask"]) if not m)

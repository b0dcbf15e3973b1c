"""The agent loop on the session's vLLM engine: multi-turn trajectories, token in /
token out, environments that fail. Environments are loaded from tests/workers/agent_envs.py
by file path, as a user's would be."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray

pytestmark = pytest.mark.integration

ENVS = str(Path(__file__).with_name("agent_envs.py"))


def agent(env: str, **overrides) -> dict:
    cfg = {"environment": f"{ENVS}:{env}", "max_turns": 3, "max_total_tokens": 64, "stop": [],
           "tool_timeout_s": 5.0}
    return {**cfg, **overrides}


def run(rollout_worker, prompt_ids, tokenizer, env: str, n: int = 2, temperature: float = 0.7, **overrides):
    samples = [{"prompt": tokenizer.decode(p), "label": None} for p in prompt_ids]
    out = ray.get(rollout_worker.run_agent.remote(prompt_ids, samples, n=n, temperature=temperature,
                                                  max_new_tokens=6, seed=11, agent=agent(env, **overrides)))
    return out["trajectories"]


def test_three_turn_logprobs_match_transformers(rollout_worker, prompt_ids, tokenizer, hf_policy_as_engine,
                                                hf_scorer, diffs, logprob_limits):
    """Policy tokens of 3-turn trajectories carry the rollout's log-probs, which match a
    trainer-side forward over the whole trajectory as closely as single-turn ones do;
    observation tokens are exactly the observation's own tokens, mask 0, log-prob 0."""
    trajs = run(rollout_worker, prompt_ids[:4], tokenizer, "EchoTurns", env_kwargs={"turns": 3})
    obs = tokenizer.encode(" ok:", add_special_tokens=False)
    for t in trajs:
        assert t["turns"] == 3 and t["finish_reason"] == "stop" and t["error"] is None, t
        assert t["observation_tokens"] == 2 * len(obs) and t["env_reward"] == pytest.approx(0.75)
        holes = [k for k, m in enumerate(t["policy_mask"]) if m == 0]
        assert len(holes) == 2 * len(obs)
        assert [t["response_ids"][k] for k in holes] == obs + obs
        assert all(t["logprobs"][k] == 0.0 for k in holes)
    prompts = [p for p in prompt_ids[:4] for _ in range(2)]
    ref = hf_scorer(hf_policy_as_engine, prompts, [t["response_ids"] for t in trajs], tokenizer.pad_token_id, 0.7)
    policy = lambda rows: [[x for x, m in zip(row, t["policy_mask"]) if m] for row, t in zip(rows, trajs)]  # noqa: E731
    d = diffs(policy([t["logprobs"] for t in trajs]), policy(ref))
    assert d.mean() < logprob_limits[0] and d.max() < logprob_limits[1], (d.mean(), d.max())


def test_async_environment_and_seeded_trajectories(rollout_worker, prompt_ids, tokenizer):
    first = run(rollout_worker, prompt_ids[:2], tokenizer, "AsyncEcho", env_kwargs={"turns": 2})
    again = run(rollout_worker, prompt_ids[:2], tokenizer, "AsyncEcho", env_kwargs={"turns": 2})
    assert [t["turns"] for t in first] == [2] * 4
    assert [t["response_ids"] for t in first] == [t["response_ids"] for t in again]


@pytest.mark.parametrize("env, overrides, words", [
    ("Raises", {}, "environment raised RuntimeError: the environment broke"),
    ("Hangs", {"tool_timeout_s": 1.0}, "did not answer within rollout.agent.tool_timeout_s=1 s"),
    ("Garbage", {}, "step returned dict"),
    ("Floods", {"max_observation_tokens": 32}, "over rollout.agent.max_observation_tokens=32"),
])
def test_a_failing_environment_ends_only_its_trajectory(rollout_worker, prompt_ids, tokenizer, env, overrides, words):
    started = time.monotonic()
    trajs = run(rollout_worker, prompt_ids[:2], tokenizer, env, **overrides)
    assert time.monotonic() - started < 20  # a hung step (30 s) is not waited for
    assert [t["finish_reason"] for t in trajs] == ["error"] * 4
    assert all(words in t["error"] for t in trajs), trajs[0]["error"]
    assert all(t["turns"] == 1 and sum(t["policy_mask"]) == len(t["response_ids"]) for t in trajs)
    # the engine is clean and serves the next call
    assert [t["finish_reason"] for t in run(rollout_worker, prompt_ids[:1], tokenizer, "EchoTurns")] == ["stop"] * 2


def test_on_error_fail_stops_the_rollout(rollout_worker, prompt_ids, tokenizer):
    with pytest.raises(ray.exceptions.RayTaskError, match="the environment broke.*on_error=fail"):
        run(rollout_worker, prompt_ids[:2], tokenizer, "Raises", on_error="fail")
    assert [t["finish_reason"] for t in run(rollout_worker, prompt_ids[:1], tokenizer, "EchoTurns")] == ["stop"] * 2


def test_budgets_end_trajectories(rollout_worker, prompt_ids, tokenizer):
    turns = run(rollout_worker, prompt_ids[:2], tokenizer, "NeverDone", max_turns=2)
    assert [(t["finish_reason"], t["turns"]) for t in turns] == [("max_turns", 2)] * 4
    tokens = run(rollout_worker, prompt_ids[:2], tokenizer, "NeverDone", max_turns=50, max_total_tokens=20)
    assert all(t["finish_reason"] == "length" and len(t["response_ids"]) <= 20 for t in tokens)
    assert all(t["policy_mask"][-1] == 1 for t in tokens)  # never ends on an unanswered observation


def test_a_waiting_trajectory_does_not_hold_the_others(rollout_worker, prompt_ids, tokenizer):
    blocked = tokenizer.decode(prompt_ids[0])
    trajs = run(rollout_worker, prompt_ids[:3], tokenizer, "WaitsForOthers", n=1, tool_timeout_s=30.0,
                env_kwargs={"blocked": blocked})
    assert [t["finish_reason"] for t in trajs] == ["stop"] * 3, [t["error"] for t in trajs]

"""A trajectory as tokens: what the policy wrote, what the environment answered.

Token in, token out: the policy's tokens are kept exactly as sampled (with their rollout
log-probs) and the environment's observations are tokenised once, on their own, and
appended; nothing already in the trajectory is ever re-tokenised from text. The mask
marks policy tokens 1 and observation tokens 0 (holes that carry no loss and no advantage).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

# How a trajectory ended.
FINISHED = "stop"          # the environment said done (or the policy answered without a call)
TRUNCATED = "length"       # the token budget (rollout.agent.max_total_tokens, or a turn's) ran out
MAX_TURNS = "max_turns"    # rollout.agent.max_turns policy turns without an end
ERROR = "error"            # the environment raised, hung, flooded or returned garbage


@dataclass
class Trajectory:
    prompt_ids: list[int]
    sample: dict                      # prompt, label and the dataset's columns (Environment.reset)
    budget: int                       # max tokens after the prompt (policy + observations)
    response_ids: list[int] = field(default_factory=list)
    policy_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)  # weight version per token (-1: observation)
    turns: int = 0                    # policy turns
    finish: str | None = None         # one of the constants above once ended
    error: str | None = None
    env_reward: float = 0.0
    tool_calls: int = 0
    tool_errors: int = 0
    tool_timeouts: int = 0
    format_errors: int = 0
    observation_tokens: int = 0
    tool_seconds: list[float] = field(default_factory=list)
    ended_with_eos: bool = True       # the last policy turn wrote its end-of-turn token

    @property
    def done(self) -> bool:
        return self.finish is not None

    @property
    def context(self) -> list[int]:
        """The next turn's prompt: everything so far, as token ids."""
        return self.prompt_ids + self.response_ids

    @property
    def room(self) -> int:
        return self.budget - len(self.response_ids)

    def add_policy_turn(self, ids: list[int], logprobs: list[float], versions: list[int] | None = None) -> None:
        """`versions`: the weight version each token was sampled under (None: 0)."""
        versions = [0] * len(ids) if versions is None else versions
        if not len(ids) == len(logprobs) == len(versions):
            raise ValueError(f"{len(ids)} policy tokens but {len(logprobs)} log-probs, {len(versions)} versions")
        self.turns += 1
        self.response_ids += ids
        self.policy_mask += [1] * len(ids)
        self.logprobs += logprobs
        self.versions += versions

    def add_observation(self, ids: list[int]) -> bool:
        """Append the environment's tokens; False (and truncated) when they leave no room
        for another policy token: an observation nobody answers trains nothing."""
        if len(ids) >= self.room:
            self.end(TRUNCATED)
            return False
        self.response_ids += ids
        self.policy_mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)
        self.versions += [-1] * len(ids)
        self.observation_tokens += len(ids)
        return True

    def end(self, finish: str, error: str | None = None) -> None:
        if self.finish is None:
            self.finish, self.error = finish, error

    def count(self, step) -> None:
        """Add a StepResult's counters and reward."""
        self.env_reward += step.reward
        self.tool_calls += step.tool_calls
        self.tool_errors += step.tool_errors
        self.tool_timeouts += step.tool_timeouts
        self.format_errors += step.format_errors
        self.tool_seconds += list(step.tool_seconds)

    def result(self) -> dict:
        """The plain-data record the rollout worker returns (picklable, no tensors)."""
        return {"response_ids": self.response_ids, "policy_mask": self.policy_mask, "logprobs": self.logprobs,
                "token_versions": self.versions,
                "finish_reason": self.finish, "error": self.error, "turns": self.turns,
                "env_reward": self.env_reward, "tool_calls": self.tool_calls, "tool_errors": self.tool_errors,
                "tool_timeouts": self.tool_timeouts, "format_errors": self.format_errors,
                "observation_tokens": self.observation_tokens, "tool_seconds": self.tool_seconds}


def trajectory_metrics(results: list[dict]) -> dict[str, float]:
    """Per-step agent metrics over trajectory records (`Trajectory.result()`).

    >>> m = trajectory_metrics([
    ...     {"turns": 2, "tool_calls": 1, "tool_errors": 0, "tool_timeouts": 0, "format_errors": 0,
    ...      "observation_tokens": 9, "finish_reason": "stop", "error": None, "tool_seconds": [0.5]},
    ...     {"turns": 1, "tool_calls": 0, "tool_errors": 0, "tool_timeouts": 0, "format_errors": 1,
    ...      "observation_tokens": 0, "finish_reason": "length", "error": None, "tool_seconds": []}])
    >>> m["agent/turns_mean"], m["agent/format_error_rate"], m["agent/truncated_frac"], m["agent/tool_latency_mean_s"]
    (1.5, 0.5, 0.5, 0.5)
    """
    n = len(results)
    mean = lambda key: sum(r[key] for r in results) / n  # noqa: E731
    frac = lambda pred: sum(1 for r in results if pred(r)) / n  # noqa: E731
    latencies = sorted(s for r in results for s in r["tool_seconds"])
    return {
        "agent/turns_mean": mean("turns"),
        "agent/turns_max": float(max(r["turns"] for r in results)),
        "agent/tool_calls_mean": mean("tool_calls"),
        "agent/tool_errors": float(sum(r["tool_errors"] for r in results)),
        "agent/tool_timeouts": float(sum(r["tool_timeouts"] for r in results)),
        "agent/format_error_rate": frac(lambda r: r["format_errors"] > 0),  # trajectories with a malformed call
        "agent/observation_tokens_mean": mean("observation_tokens"),
        "agent/truncated_frac": frac(lambda r: r["finish_reason"] in (TRUNCATED, MAX_TURNS)),
        "agent/env_errors": float(sum(1 for r in results if r["finish_reason"] == ERROR)),
        "agent/tool_latency_mean_s": sum(latencies) / len(latencies) if latencies else math.nan,
        "agent/tool_latency_p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        if latencies else math.nan,
    }

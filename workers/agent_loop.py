"""The agent loop: many multi-turn trajectories on one vLLM engine at once.

Per trajectory: generate a turn (until EOS, a stop string such as </tool_call>, the
turn's token budget or the trajectory's), hand the turn's text to its environment in a
worker thread, append the observation's tokens, generate again, until the environment
says done, `max_turns` turns were written or the budget is spent. The engine is stepped
directly (continuous batching): while one trajectory waits on a tool the others keep
decoding, and its next turn joins the running batch when the tool answers.

Environment calls that raise, return garbage, flood, or do not answer within
`tool_timeout_s` end their trajectory with a recorded error (`on_error: continue`) or
stop the run (`on_error: fail`). A Python call cannot be killed: a call that never
returns keeps its thread until it does (code-running tools use the killable sandbox).
"""
from __future__ import annotations

import concurrent.futures as cf
import time
from dataclasses import dataclass

from rlhf.agent.env import EnvError, StepResult, call_maybe_async, check_step_result
from rlhf.agent.render import ObservationRenderer
from rlhf.agent.trajectory import ERROR, FINISHED, MAX_TURNS, TRUNCATED, Trajectory
from rlhf.seeds import derive_seed
from workers.partial import EngineRequests, Sampled


class AgentRunError(RuntimeError):
    """An environment failed under rollout.agent.on_error: fail."""


@dataclass
class TurnSampling:
    """How each turn is sampled (rollout section) plus the seed of its trajectory."""
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int            # per turn
    stop: list[str]
    stop_token_ids: list[int]


class AgentLoop:
    def __init__(self, requests: EngineRequests, tokenizer, make_env, *, chat: bool, max_turns: int,
                 max_total_tokens: int, tool_timeout_s: float, max_observation_tokens: int, concurrency: int,
                 on_error: str):
        # the engine's requests, paused and resumed around weight updates (workers/partial.py)
        self.requests, self.make_env = requests, make_env
        self.render = ObservationRenderer(tokenizer, chat)
        self.tokenizer = tokenizer
        self.max_turns, self.budget = max_turns, max_total_tokens
        self.step_timeout_s = tool_timeout_s
        self.max_observation_tokens = max_observation_tokens
        self.concurrency, self.on_error = concurrency, on_error

    # ---------------------------------------------------------------- the loop
    def run(self, prompts: list[list[int]], samples: list[dict], sampling: TurnSampling,
            seeds: list[int | None]) -> list[dict]:
        """One trajectory per (prompt, sample, seed), in order; returns `Trajectory.result()`s."""
        trajs = [Trajectory(list(p), s, self.budget) for p, s in zip(prompts, samples)]
        waiting = list(range(len(trajs)))[::-1]    # not started (popped from the end: in order)
        generating = self.requests.pending         # trajectory -> its turn in the engine
        env_calls: dict[cf.Future, tuple[int, float]] = {}  # future -> (trajectory, started)
        envs: dict[int, object] = {}
        limit = self.concurrency or len(trajs)
        # not a `with` block: its exit would wait for a call that never returns
        pool = cf.ThreadPoolExecutor(max_workers=min(limit, 64), thread_name_prefix="env")
        try:
            while waiting or generating or env_calls:
                while waiting and len(generating) + len(env_calls) < limit:
                    i = waiting.pop()
                    envs[i] = self._start(i, trajs[i], pool, env_calls)
                if generating:
                    for i, turn in self.requests.step():
                        self._turn_done(i, trajs[i], turn, envs[i], pool, env_calls)
                else:  # every trajectory waits on its tool: a weight update may still come in
                    self.requests.idle_pause_point()
                    cf.wait(list(env_calls), timeout=0.05, return_when=cf.FIRST_COMPLETED)
                self._collect_env_calls(trajs, env_calls, sampling, seeds)
        finally:
            self.requests.abort()
            for future in env_calls:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            for env in envs.values():
                _close(env)
        return [t.result() for t in trajs]

    def _start(self, i: int, traj: Trajectory, pool, env_calls) -> object:
        """Make the trajectory's environment and queue its reset (in a worker thread)."""
        env = self.make_env()
        env_calls[pool.submit(_reset, env, traj.sample)] = (i, time.monotonic())
        return env

    def _turn_done(self, i: int, traj: Trajectory, turn: Sampled, env, pool, env_calls) -> None:
        ids = turn.token_ids
        traj.add_policy_turn(ids, turn.logprobs, turn.versions)
        traj.ended_with_eos = bool(ids) and ids[-1] == self.tokenizer.eos_token_id
        if traj.room <= 0:  # a turn cut by its own budget (rollout.max_new_tokens) still goes to the env
            traj.end(TRUNCATED)
            return
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        env_calls[pool.submit(_step, env, text)] = (i, time.monotonic())

    def _collect_env_calls(self, trajs, env_calls, sampling, seeds) -> None:
        """Finished (or overdue) environment calls: append observations, queue next turns."""
        now = time.monotonic()
        for future, (i, started) in list(env_calls.items()):
            traj = trajs[i]
            if future.done():
                del env_calls[future]
                try:
                    step = future.result()
                except EnvError as err:
                    self._fail(traj, str(err))
                    continue
                except Exception as err:  # noqa: BLE001 - any environment bug ends only its trajectory
                    self._fail(traj, f"environment raised {type(err).__name__}: {_one_line(err)}")
                    continue
                if self._apply(traj, step):
                    self._submit(i, traj, sampling, seeds[i])
            elif now - started > self.step_timeout_s:
                del env_calls[future]  # its thread is abandoned: see the module docstring
                self._fail(traj, f"environment did not answer within rollout.agent.tool_timeout_s="
                                 f"{self.step_timeout_s:g} s")

    def _apply(self, traj: Trajectory, step: StepResult) -> bool:
        """Add an environment answer to the trajectory; True when the policy writes next."""
        traj.count(step)
        if step.done:
            traj.end(FINISHED)
            return False
        if traj.turns >= self.max_turns:
            traj.end(MAX_TURNS)
            return False
        ids = self.render.ids(step.observation, step.messages, traj.ended_with_eos) \
            if traj.turns else self._reset_ids(step)
        if len(ids) > self.max_observation_tokens:
            self._fail(traj, f"observation of {len(ids)} tokens is over rollout.agent.max_observation_tokens="
                             f"{self.max_observation_tokens}")
            return False
        return traj.add_observation(ids) if ids else traj.room > 0

    def _reset_ids(self, step: StepResult) -> list[int]:
        """reset()'s text continues the prompt as plain text (the prompt is already rendered)."""
        return self.tokenizer.encode(step.observation, add_special_tokens=False) if step.observation else []

    def _submit(self, i: int, traj: Trajectory, sampling: TurnSampling, seed: int | None) -> None:
        from vllm import SamplingParams

        params = SamplingParams(
            n=1, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else 0,
            max_tokens=min(sampling.max_new_tokens, traj.room), stop=list(sampling.stop),
            include_stop_str_in_output=True, stop_token_ids=list(sampling.stop_token_ids),
            seed=None if seed is None else derive_seed(seed, traj.turns), logprobs=0, detokenize=True)
        self.requests.add(i, traj.context, params)

    def _fail(self, traj: Trajectory, why: str) -> None:
        if self.on_error == "fail":
            raise AgentRunError(f"trajectory of prompt {traj.sample.get('prompt', '')[:40]!r}: {why} "
                                f"(rollout.agent.on_error=fail)")
        traj.end(ERROR, why)


# ---------------------------------------------------------------- environment calls (worker threads)
def _reset(env, sample: dict) -> StepResult:
    observation = call_maybe_async(env.reset, sample)
    if observation is None:
        observation = ""
    if not isinstance(observation, str):
        raise EnvError(f"reset returned {type(observation).__name__}, not text")
    return StepResult(observation)


def _step(env, action: str) -> StepResult:
    return check_step_result(call_maybe_async(env.step, action))


def _close(env) -> None:
    close = getattr(env, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001 - closing must not mask the rollout's result
            pass


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] + "..." if len(text) > 200 else text

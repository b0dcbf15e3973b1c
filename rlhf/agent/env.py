"""The environment interface: the one extension point of agentic rollouts.

An environment is a class; the agent loop makes one instance per trajectory:

    class MyEnv:
        tools = []                                   # optional: Tool objects shown to the policy
        def __init__(self, **kwargs): ...            # rollout.agent.env_kwargs
        def reset(self, sample: dict) -> str:        # sample: prompt, label, the dataset's columns
            return ""                                # text appended after the prompt ("" = nothing)
        def step(self, action: str):                 # the policy's last turn, as text
            return observation, reward, done, info   # or a StepResult
        def close(self): ...                         # optional

`reset` and `step` may be `async def`. The observation is appended to the trajectory as
tokens the policy did not write (zero loss, zero advantage); `reward` adds to the
trajectory's score; `done` ends it. Load one with `load_environment("path/to/env.py:MyEnv")`
or by a registered name (`register_environment`). A policy that calls tools is
`ToolEnvironment`: one implementation of this interface, not a separate code path.
"""
from __future__ import annotations

import asyncio
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from rlhf.agent.format import format_response, parse_turn


class EnvError(Exception):
    """An environment that cannot be loaded or answered something unusable."""


@dataclass
class StepResult:
    observation: str = ""
    reward: float = 0.0
    done: bool = False
    info: dict = field(default_factory=dict)
    # chat-template models: the observation as messages (default: one "user" message of it)
    messages: list[dict] | None = None
    # what the loop counts (ToolEnvironment fills them; other environments may)
    tool_calls: int = 0
    tool_errors: int = 0
    tool_timeouts: int = 0
    format_errors: int = 0
    tool_seconds: list[float] = field(default_factory=list)


def check_step_result(result: Any) -> StepResult:
    """A step's return value as a StepResult; EnvError naming what is wrong."""
    if isinstance(result, StepResult):
        out = result
    elif isinstance(result, tuple) and len(result) == 4:
        out = StepResult(*result)
    else:
        raise EnvError(f"step returned {_show(result)}; expected (observation, reward, done, info) or a StepResult")
    if not isinstance(out.observation, str):
        raise EnvError(f"step's observation is {_show(out.observation)}, not text")
    if isinstance(out.reward, bool) or not isinstance(out.reward, (int, float)) or out.reward != out.reward \
            or abs(out.reward) == float("inf"):
        raise EnvError(f"step's reward is {_show(out.reward)}, not a finite number")
    if not isinstance(out.done, bool):
        raise EnvError(f"step's done is {_show(out.done)}, not a bool")
    if not isinstance(out.info, dict):
        raise EnvError(f"step's info is {_show(out.info)}, not a dict")
    out.reward = float(out.reward)
    return out


def call_maybe_async(fn: Callable, *args):
    """fn(*args), awaited on a private event loop when it is a coroutine (the loop runs
    environment calls in worker threads: each has its own loop)."""
    result = fn(*args)
    return asyncio.run(result) if inspect.isawaitable(result) else result


# ---------------------------------------------------------------- tools as an environment
class ToolEnvironment:
    """The policy calls tools (rlhf.agent.format); each call's result comes back as a
    <tool_response>; a turn without a call is the final answer and ends the trajectory.
    Format errors: a call that cannot be parsed, names an unknown tool or does not fit the
    tool's JSON schema (the tool never runs); tool errors: the tool ran and failed.
    A malformed call, an unknown tool or a failing tool is answered with
    "<tool_response>error: ...</tool_response>" so the policy can recover; the run goes on."""

    def __init__(self, tools: list, timeout_s: float = 10.0, max_output_chars: int = 2000):
        self.tools = list(tools)
        self._by_name = {t.name: t for t in self.tools}
        self.timeout_s, self.max_output_chars = timeout_s, max_output_chars

    def reset(self, sample: dict) -> str:
        return ""

    def step(self, action: str) -> StepResult:
        turn = parse_turn(action)
        if not turn.wants_tools:
            return StepResult(done=True)
        if turn.error is not None:
            text = "error: " + turn.error
            return StepResult(format_response(text), messages=[_tool_message(text)], format_errors=1)
        out = StepResult()
        results = []
        for call in turn.calls:
            out.tool_calls += 1
            tool = self._by_name.get(call.name)
            if tool is None:  # a format error: the call names no tool the policy was given
                out.format_errors += 1
                results.append(f"error: unknown tool {call.name!r} (tools: {', '.join(self._by_name)})")
                continue
            result = tool.call(call.arguments, timeout_s=self.timeout_s, max_output_chars=self.max_output_chars)
            out.tool_seconds.append(result.seconds)
            out.format_errors += result.bad_arguments
            out.tool_errors += result.error is not None and not result.bad_arguments
            out.tool_timeouts += result.timed_out
            results.append(result.text)  # on an error: "error: ..." (or the tool's own account)
        out.observation = "".join(format_response(r) for r in results)
        out.messages = [_tool_message(r) for r in results]
        return out


def _tool_message(text: str) -> dict:
    return {"role": "tool", "content": text}


# ---------------------------------------------------------------- registry and loading
_REGISTRY: dict[str, Callable] = {}


def register_environment(name: str):
    """Decorator: make an environment class loadable as `rollout.agent.environment: name`."""
    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"environment {name!r} is already registered ({_REGISTRY[name]!r})")
        _REGISTRY[name] = cls
        return cls
    return deco


def resolve_environment_spec(spec: str, base_dir: str | os.PathLike | None = None) -> str:
    """`spec` with a file path made absolute (done in the controller so every rollout
    worker loads the same file); EnvError naming the spec."""
    from rewards.loader import resolve_spec_string

    if ":" not in spec:
        if spec not in _REGISTRY:
            raise EnvError(f"unknown environment {spec!r} (registered: {', '.join(sorted(_REGISTRY)) or 'none'}; "
                           f"or give 'path/to/env.py:ClassName')")
        return spec
    try:
        return resolve_spec_string(spec, base_dir)
    except (ValueError, FileNotFoundError) as err:
        raise EnvError(str(err).replace("reward file", "environment file")) from None


def load_environment(spec: str, base_dir: str | os.PathLike | None = None) -> Callable:
    """The environment class (or factory) named by `spec`."""
    from rewards.loader import load_function

    spec = resolve_environment_spec(spec, base_dir)
    if ":" not in spec:
        return _REGISTRY[spec]
    try:
        factory = load_function(spec)
    except AttributeError as err:
        raise EnvError(f"environment {spec}: {str(err).replace('function', 'class')}") from None
    except Exception as err:  # the file itself fails to import
        raise EnvError(f"environment {spec}: cannot import: {type(err).__name__}: {err}") from None
    if not callable(factory):
        raise EnvError(f"environment {spec} is a {type(factory).__name__}, not a class")
    for verb in ("reset", "step"):
        if inspect.isclass(factory) and not callable(getattr(factory, verb, None)):
            raise EnvError(f"environment {spec} has no {verb}() method")
    return factory


def _show(x: Any) -> str:
    text = repr(x)
    return f"{type(x).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def environment_factory(agent) -> Callable[[], object]:
    """A no-argument callable making one environment per trajectory, from the
    `rollout.agent` section: its environment class with env_kwargs, or its tools."""
    if agent.environment:
        cls, kwargs = load_environment(agent.environment), dict(agent.env_kwargs)
        return lambda: cls(**kwargs)
    from rlhf.agent.tools import load_tool

    tools = [load_tool(spec) for spec in agent.tools]
    return lambda: ToolEnvironment(tools, agent.tool_timeout_s, agent.tool_max_output_chars)


def tool_schemas(agent) -> list[dict]:
    """The JSON schemas of the tools the policy may call (shown in its prompt)."""
    if agent.environment:
        tools = getattr(load_environment(agent.environment), "tools", None) or []
    else:
        from rlhf.agent.tools import load_tool

        tools = [load_tool(spec) for spec in agent.tools]
    return [t.schema() for t in tools]


def resolve_agent_specs(agent, base_dir: str | os.PathLike):
    """The `rollout.agent` section with its environment and tool files as absolute paths."""
    import dataclasses

    from rewards.loader import resolve_spec_string

    tools = [resolve_spec_string(t, base_dir) if ":" in t else t for t in agent.tools]
    env = resolve_environment_spec(agent.environment, base_dir) if agent.environment else None
    return dataclasses.replace(agent, environment=env, tools=tools)

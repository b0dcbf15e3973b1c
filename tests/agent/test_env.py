"""The environment interface: loading by name or file, what a step may return."""
from __future__ import annotations

import pytest

from rlhf.agent.env import EnvError, StepResult, check_step_result, load_environment, register_environment


def test_a_step_may_return_a_tuple_or_a_step_result():
    assert check_step_result(("obs", 1, True, {"k": 1})) == StepResult("obs", 1.0, True, {"k": 1})
    assert check_step_result(StepResult("x", done=True)).done


@pytest.mark.parametrize("value, words", [
    ({"observation": 3}, "step returned dict"),
    (("obs", 1.0, True), "expected (observation, reward, done, info)"),
    ((3, 1.0, True, {}), "observation is int 3, not text"),
    (("o", float("nan"), True, {}), "reward is float nan, not a finite number"),
    (("o", "1", True, {}), "reward is str '1'"),
    (("o", 1.0, 1, {}), "done is int 1, not a bool"),
    (("o", 1.0, True, None), "info is NoneType None, not a dict"),
])
def test_garbage_from_a_step_is_named(value, words):
    with pytest.raises(EnvError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_step_result(value)


def test_load_by_file_and_by_name(tmp_path):
    (tmp_path / "my_env.py").write_text(
        "class Guess:\n"
        "    def reset(self, sample): return ''\n"
        "    def step(self, action): return 'no', 0.0, True, {}\n"
        "NOT_A_CLASS = 3\n"
        "class NoStep:\n"
        "    def reset(self, sample): return ''\n")
    cls = load_environment("my_env.py:Guess", base_dir=tmp_path)
    assert cls().step("4") == ("no", 0.0, True, {})

    @register_environment("test_guess")
    class Named(cls):
        pass

    assert load_environment("test_guess") is Named
    with pytest.raises(ValueError, match="already registered"):
        register_environment("test_guess")(cls)
    for spec, words in [("my_env.py:Missing", "has no class 'Missing'"), ("my_env.py:NOT_A_CLASS", "is a int"),
                        ("my_env.py:NoStep", "has no step"), ("nope.py:X", "environment file 'nope.py' not found"),
                        ("no_such_env", "unknown environment 'no_such_env'")]:
        with pytest.raises(EnvError, match=words):
            load_environment(spec, base_dir=tmp_path)


def test_a_file_that_fails_to_import_is_named(tmp_path):
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(EnvError, match=r"broken.py:Env: cannot import: ModuleNotFoundError"):
        load_environment("broken.py:Env", base_dir=tmp_path)


# ---------------------------------------------------------------- tools as an environment
def tool_env(*names, **kwargs):
    from rlhf.agent.env import ToolEnvironment
    from rlhf.agent.tools import load_tool

    return ToolEnvironment([load_tool(n) for n in names], **{"timeout_s": 5.0, **kwargs})


def test_a_tool_call_is_answered_with_its_result():
    from rlhf.agent.format import format_call

    step = tool_env("calculator").step("let me see " + format_call("calculator", {"expression": "123*45"}))
    assert (step.observation, step.done, step.tool_calls, step.tool_errors) == (
        "<tool_response>5535</tool_response>", False, 1, 0)
    assert step.messages == [{"role": "tool", "content": "5535"}] and len(step.tool_seconds) == 1


def test_a_turn_without_a_call_ends_the_trajectory():
    step = tool_env("calculator").step("5535")
    assert step.done and step.observation == "" and step.tool_calls == 0


@pytest.mark.parametrize("action, words, counter", [
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "1+"}', "error: tool call not closed", "format_errors"),
    ('<tool_call>{"name": "calculator", "arguments": {"expr": "1+1"}}</tool_call>', "error: bad arguments", "format_errors"),
    ('<tool_call>{"name": "search", "arguments": {}}</tool_call>', "error: unknown tool 'search'", "format_errors"),
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "1/0"}}</tool_call>', "error: ", "tool_errors"),
])
def test_call_errors_go_back_to_the_policy(action, words, counter):
    step = tool_env("calculator").step(action)
    assert not step.done and step.observation.startswith("<tool_response>" + words), step.observation
    assert getattr(step, counter) == 1 and step.format_errors + step.tool_errors == 1


def test_python_tool_runs_in_the_sandbox_and_times_out():
    from rlhf.agent.format import format_call

    env = tool_env("python", timeout_s=1.0)
    ok = env.step(format_call("python", {"code": "print(6*7)"}))
    assert ok.observation.startswith("<tool_response>42") and ok.tool_errors == 0
    slow = env.step(format_call("python", {"code": "while True: pass"}))
    assert slow.tool_errors == slow.tool_timeouts == 1 and "timed out after 1 s" in slow.observation

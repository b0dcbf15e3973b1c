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

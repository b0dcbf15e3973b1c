"""Convention detection, spec-string loading and return-value checks (in-process, fast)."""
import math
from pathlib import Path

import pytest

from rewards.loader import BadReturn, check_batch_result, check_sample_result, detect_style, load_function, resolve_spec_string

FIXTURES = Path(__file__).parent / "fixtures"


def verl_fn(data_source, solution_str, ground_truth, extra_info=None): ...
def verl_batch(data_sources, solution_strs, ground_truths, extra_infos): ...
def openrlhf_fn(queries, prompts, labels): ...
def native(response, label, **kwargs): ...
def native_named(response, label, *, data_source, scale=1.0): ...
def native_batch(responses, labels, **kwargs): ...
def other_names(a, b): ...
def one_arg(response): ...
async def async_native(response, label): ...


def marked(xs, ys): ...


marked.batched = True


@pytest.mark.parametrize(
    "fn, batched, convention, is_batched, is_async",
    [
        (verl_fn, None, "verl", False, False),
        (verl_batch, None, "verl", True, False),
        (openrlhf_fn, None, "openrlhf", True, False),
        (native, None, "native", False, False),
        (native_batch, None, "native", True, False),
        (marked, None, "native", True, False),
        (other_names, None, "native", False, False),
        (other_names, True, "native", True, False),
        (native_batch, False, "native", False, False),  # the spec overrides the name rule
        (async_native, None, "native", False, True),
    ],
)
def test_detect_style_table(fn, batched, convention, is_batched, is_async):
    s = detect_style(fn, batched)
    assert (s.convention, s.batched, s.is_async) == (convention, is_batched, is_async)


def test_detect_style_rejects_unknown_signature():
    with pytest.raises(TypeError, match="cannot tell how to call one_arg"):
        detect_style(one_arg)


def test_wanted_columns():
    cols = ["data_source", "extra_info", "difficulty", "label"]
    assert detect_style(native).wanted_columns(cols) == ["data_source", "extra_info", "difficulty"]
    assert detect_style(native_named).wanted_columns(cols) == ["data_source"]
    assert detect_style(verl_fn).wanted_columns(cols) == ["data_source", "extra_info"]
    assert detect_style(openrlhf_fn).wanted_columns(cols) == []


@pytest.mark.parametrize(
    "result, expected",
    [
        (1, (1.0, {})),
        (0.25, (0.25, {})),
        (True, (1.0, {})),
        ({"score": 0.5, "acc": 1, "pred": "x"}, (0.5, {"acc": 1.0})),
    ],
)
def test_check_sample_result_ok(result, expected):
    assert check_sample_result(result) == expected


@pytest.mark.parametrize(
    "result, match",
    [
        ("abc", r"returned 'abc' \(str\)"),
        (None, r"returned None \(NoneType\)"),
        (math.nan, "not finite"),
        (math.inf, "not finite"),
        ({"acc": 1.0}, "without a 'score' key"),
        ({"score": None}, "'score' = None"),
        ([1.0], r"returned \[1.0\] \(list\)"),
    ],
)
def test_check_sample_result_bad(result, match):
    with pytest.raises(BadReturn, match=match):
        check_sample_result(result)


def test_check_batch_result_tensor_and_dict():
    torch = pytest.importorskip("torch")
    assert check_batch_result(torch.tensor([1.0, 0.0]), 2) == ([1.0, 0.0], {})
    scores, extra = check_batch_result({"rewards": torch.tensor([1.0, 0.5]), "scores": [0, 1], "extra_logs": {"acc": torch.tensor(0.5)}, "tag": "x"}, 2)
    assert scores == [1.0, 0.5]
    assert extra == {"scores": [0.0, 1.0], "acc": [0.5, 0.5]}
    assert check_sample_result(torch.tensor(0.75)) == (0.75, {})


@pytest.mark.parametrize(
    "result, n, match",
    [
        ([1.0], 2, "returned 1 scores for a batch of 2"),
        ("ab", 2, r"returned 'ab' \(str\)"),
        (None, 1, "returned None"),
        ([1.0, None], 2, "position 1"),
        ([1.0, math.nan], 2, "not finite"),
        ({"acc": [1.0]}, 1, "without a 'rewards' or 'scores' key"),
    ],
)
def test_check_batch_result_bad(result, n, match):
    with pytest.raises(BadReturn, match=match):
        check_batch_result(result, n)


def test_resolve_and_load(tmp_path, monkeypatch):
    abs_spec = resolve_spec_string("verl_reward.py:compute_score", FIXTURES)
    assert abs_spec == f"{FIXTURES / 'verl_reward.py'}:compute_score"
    monkeypatch.chdir(FIXTURES)  # then cwd
    assert resolve_spec_string("verl_reward.py:compute_score", tmp_path) == abs_spec
    assert resolve_spec_string("json:loads") == "json:loads"  # module: left alone
    assert load_function("json:loads")("1") == 1
    assert load_function("verl_reward.py:compute_score")("x", "a 4", "4") == 1.0
    with pytest.raises(FileNotFoundError, match="reward file 'missing.py' not found"):
        resolve_spec_string("missing.py:f", tmp_path)
    with pytest.raises(AttributeError, match="has no function 'nope'.*compute_score"):
        load_function("verl_reward.py:nope")
    with pytest.raises(TypeError, match="not a function"):
        load_function("user_fns.py:NOT_A_FUNCTION")
    with pytest.raises(ModuleNotFoundError):
        load_function("no_such_pkg.mod:f")
    with pytest.raises(ValueError, match="expected 'path/to/file.py:function'"):
        resolve_spec_string("file.py:")

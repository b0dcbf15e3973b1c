"""RewardManager end to end: fixture files unchanged, conventions, weights, columns,
and failures (exception, timeout, bad return, dead worker) under both policies.

User functions run in spawned worker processes; each test keeps batches tiny and
timeouts short so the file runs in seconds.
"""
import math
import re
import time
from pathlib import Path

import pytest

from rewards import RewardError, RewardManager, RewardSpec

FIXTURES = Path(__file__).parent / "fixtures"
U = "user_fns.py:"  # resolved against base_dir=FIXTURES


def manager(*specs, **kw):
    kw.setdefault("num_workers", 1)
    kw.setdefault("base_dir", FIXTURES)
    return RewardManager(list(specs), **kw)


# ------------------------------------------------------------------ fixture files


def test_verl_and_openrlhf_files_unchanged_with_weights():
    prompts = ["347+85=", "1+1=", "2+2=", "9+9="]
    responses = ["432", " 2 ", "5", "it is 18"]
    labels = ["432", "2", "4", "18"]
    specs = [
        RewardSpec("verl", str(FIXTURES / "verl_reward.py") + ":compute_score", weight=1.0),
        RewardSpec("openrlhf", "openrlhf_reward.py:reward_func", weight=0.5),  # relative to base_dir
        RewardSpec("tiny", "tiny_arithmetic", weight=2.0),
    ]
    columns = {"data_source": ["tiny"] * 4, "extra_info": [{"i": i} for i in range(4)]}
    with manager(*specs, num_workers=2) as rm:
        r = rm.score(prompts, responses, labels, columns)
    assert r.components["verl"] == [1.0, 1.0, 0.0, 1.0]
    assert r.components["openrlhf"] == [1.0, 1.0, 0.0, 0.0]
    assert r.components["tiny"] == [1.0, 1.0, 0.0, 0.0]
    assert r.scores == pytest.approx([3.5, 3.5, 0.0, 1.0])
    assert r.errors == 0 and r.extra == {}


def test_relative_path_falls_back_to_cwd(monkeypatch):
    monkeypatch.chdir(FIXTURES.parent)
    with RewardManager([RewardSpec("v", "fixtures/verl_reward.py:compute_score")], num_workers=1, base_dir="/nonexistent") as rm:
        assert rm.score(["p"], ["x 7"], ["7"]).scores == [1.0]


# -------------------------------------------------------------------- conventions

PROMPTS = ["p0:", "p1:"]
RESPONSES = ["ab", "xyz"]
LABELS = ["ab", "q"]
COLUMNS = {"data_source": ["a", "b"], "difficulty": [2.0, 3.0], "extra_info": [None, {"k": 1}]}


@pytest.mark.parametrize(
    "fn, kwargs, batched, expected, extra",
    [
        (U + "contains", {}, None, [1.0, 0.0], {}),
        (U + "columns_by_name", {}, None, [2.0, 0.0], {"difficulty": [2.0, 3.0]}),
        (U + "columns_var_kw", {}, None, [4.0, 4.0], {}),  # 3 columns + prompt
        (U + "scaled", {"scale": 0.5}, None, [1.0, 1.5], {}),
        (U + "batch_by_name", {}, None, [2.0, 3.0], {}),
        (U + "batch_marked", {}, None, [1.0, 0.0], {"acc": [0.5, 0.5]}),
        (U + "plain_pair", {}, True, [2.0, 3.0], {}),
        (U + "plain_pair", {}, None, [2.0, 3.0], {}),
        (U + "async_one", {}, None, [1.0, 0.0], {}),
        (U + "async_batch", {}, None, [1.0, 0.0], {}),
        (U + "verl_batch", {}, None, [1.0, 0.5], {}),
        (U + "openrlhf_dict", {}, None, [1.0, 1.0], {"scores": [0.5, 0.5], "mean_len": [5.5, 5.5]}),
        ("exact_match", {}, None, [1.0, 0.0], {}),
        ("format_regex", {"pattern": "x.z"}, None, [0.0, 1.0], {}),
        ("overlong_penalty", {"max_length": 3, "cache_length": 2}, None, [-0.5, -1.0], {}),
    ],
)
def test_conventions_table(fn, kwargs, batched, expected, extra):
    with manager(RewardSpec("r", fn, kwargs=kwargs, batched=batched)) as rm:
        res = rm.score(PROMPTS, RESPONSES, LABELS, COLUMNS)
    assert res.components["r"] == pytest.approx(expected)
    assert res.extra == {f"r/{k}": v for k, v in extra.items()}


def test_in_process_mode_and_overlong_uses_response_length_column():
    specs = [RewardSpec("c", U + "contains"), RewardSpec("len", "length_penalty", weight=0.1, kwargs={"max_length": 10, "cache_length": 5})]
    with manager(*specs, num_workers=0) as rm:
        res = rm.score(["p", "p"], ["a", "b"], ["a", "a"], {"response_length": [1, 10]})
    assert res.components == {"c": [1.0, 0.0], "len": [0.0, -1.0]}
    assert res.scores == pytest.approx([1.0, -0.1])


def test_many_samples_two_workers_keep_order():
    n = 200
    responses = [str(i) for i in range(n)]
    labels = [str(i) if i % 3 else "x" for i in range(n)]
    with manager(RewardSpec("c", U + "contains"), RewardSpec("a", U + "async_one"), num_workers=2) as rm:
        res = rm.score([""] * n, responses, labels)
    want = [0.0 if i % 3 == 0 else 1.0 for i in range(n)]
    assert res.components["c"] == want and res.components["a"] == want


# ------------------------------------------------------------------------ failures

FAILURES = [
    # fn, responses (the failing one is at index 1), what the error must say
    (U + "boom", ["ok", "boom!"], r"sample 1 \(response 'boom!'\): ValueError: boom in response \(at user_fns.py:\d+ in boom\)"),
    (U + "slow", ["ok", "slow please"], r"sample 1 \(response 'slow please'\): timed out after 0.5s"),
    (U + "async_slow", ["ok", "slow"], r"sample 1 \(response 'slow'\): timed out after 0.5s"),
    (U + "wrong_type", ["ok", "str"], r"sample 1 \(response 'str'\): returned 'abc' \(str\); expected a number"),
    (U + "wrong_type", ["ok", "none"], r"sample 1 .*returned None \(NoneType\)"),
    (U + "wrong_type", ["ok", "nan"], r"sample 1 .*returned nan \(not finite\)"),
    (U + "wrong_type", ["ok", "nodict"], r"sample 1 .*returned a dict without a 'score' key \(keys: \['acc'\]\)"),
    (U + "crash", ["ok", "crash"], r"sample 1 .*worker process died \(exit code 3\)"),
    (U + "batch_wrong_count", ["ok", "x"], r"a batch of 2 samples \(indices 0..1, first response 'ok'\): returned 1 scores for a batch of 2 samples"),
    ("format_regex", ["ok", "x"], r"sample 0 .*TypeError: format_regex\(\) missing 1 required keyword-only argument: 'pattern'"),
]


@pytest.mark.parametrize("fn, responses, message", FAILURES)
def test_failure_fail_policy_raises_clear_error(fn, responses, message):
    with manager(RewardSpec("bad", fn), timeout_s=0.5, on_error="fail") as rm:
        with pytest.raises(RewardError) as info:
            rm.score(["p", "p"], responses, ["a", "a"])
    assert f"reward 'bad' (fn={fn!r}) failed on " in str(info.value)
    assert re.search(message, str(info.value)), str(info.value)


@pytest.mark.parametrize("fn, responses, message", FAILURES)
def test_failure_score_policy_uses_error_score(fn, responses, message):
    specs = [RewardSpec("bad", fn), RewardSpec("ok", "exact_match", weight=10.0)]
    with manager(*specs, timeout_s=0.5, on_error="score", error_score=-1.0) as rm:
        res = rm.score(["p", "p"], responses, ["ok", "a"])
        again = rm.score(["p"], ["ok"], ["ok"])  # the manager still works afterwards
    batch = "batch" in fn or fn == "format_regex"
    assert res.components["bad"] == ([-1.0, -1.0] if batch else [1.0, -1.0])
    assert res.components["ok"] == [10.0 / 10.0, 0.0]
    assert res.scores == pytest.approx([res.components["bad"][0] + 10.0, -1.0])
    assert res.errors == (2 if batch else 1)
    assert again.errors == (1 if batch else 0)


def test_hung_workers_are_replaced_and_do_not_hang_the_run():
    t0 = time.monotonic()
    with manager(RewardSpec("s", U + "slow"), num_workers=2, timeout_s=0.3, on_error="score") as rm:
        res = rm.score(["p"] * 6, ["slow", "ok", "slow", "slow", "ok", "slow"], ["a"] * 6)
        assert rm.workers_replaced == 4
        assert rm.score(["p"], ["ok"], ["a"]).scores == [1.0]
    assert res.components["s"] == [0.0, 1.0, 0.0, 0.0, 1.0, 0.0] and res.errors == 4
    assert time.monotonic() - t0 < 15  # 30 s sleeps each, killed after 0.3 s


def test_fail_policy_stops_at_first_failure():
    t0 = time.monotonic()
    with manager(RewardSpec("s", U + "slow"), timeout_s=0.3) as rm:
        with pytest.raises(RewardError, match="sample 0"):
            rm.score(["p"] * 20, ["slow"] * 20, ["a"] * 20)
        assert rm.workers_replaced == 1
    assert time.monotonic() - t0 < 10


def test_extra_of_per_sample_dicts_is_nan_where_missing():
    with manager(RewardSpec("w", U + "wrong_type"), on_error="score") as rm:
        res = rm.score(["p"] * 2, ["ok", "none"], ["a"] * 2)
    assert res.components["w"] == [1.0, 0.0] and res.extra == {}
    with manager(RewardSpec("c", U + "columns_by_name"), on_error="score") as rm:
        res = rm.score(["p"] * 2, ["x", "y"], ["a"] * 2, {"data_source": ["a", "a"], "difficulty": [1.0, "hard"]})
    assert res.errors == 1 and res.extra["c/difficulty"][0] == 1.0 and math.isnan(res.extra["c/difficulty"][1])


# --------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "spec, message",
    [
        (RewardSpec("a", "missing.py:f"), r"reward 'a' \(fn='missing.py:f'\): reward file 'missing.py' not found"),
        (RewardSpec("a", U + "nope"), r"reward 'a' \(fn='user_fns.py:nope'\) could not be loaded: AttributeError: .*has no function 'nope'"),
        (RewardSpec("a", "no_such_pkg.mod:f"), r"could not be loaded: ModuleNotFoundError: No module named 'no_such_pkg'"),
        (RewardSpec("a", U + "NOT_A_FUNCTION"), r"could not be loaded: TypeError: .* is a int, not a function"),
        (RewardSpec("a", "gsm9k"), r"reward 'a' \(fn='gsm9k'\): .*no reward function named 'gsm9k'"),
        (RewardSpec("a", U + "contains", kwargs={"scale": 2}), r"does not accept keyword argument\(s\) \['scale'\]"),
        (RewardSpec("a", "gsm8k", kwargs={"mode": "x"}), r"reward 'a' \(fn='gsm8k'\) does not accept keyword argument\(s\) \['mode'\]"),
    ],
)
def test_load_errors_name_the_spec(spec, message):
    with pytest.raises(RewardError, match=message):
        manager(spec)


def test_file_that_fails_on_import(tmp_path):
    (tmp_path / "broken.py").write_text("import json\nraise RuntimeError('bad config')\n")
    with pytest.raises(RewardError, match=r"could not be loaded: RuntimeError: bad config \(at broken.py:2"):
        RewardManager([RewardSpec("b", "broken.py:f")], num_workers=1, base_dir=tmp_path)


def test_file_that_exits_on_import(tmp_path):
    (tmp_path / "exits.py").write_text("import os\nos._exit(3)\n")
    t0 = time.monotonic()
    with pytest.raises(RewardError, match=r"reward worker died while loading the reward functions"):
        RewardManager([RewardSpec("b", "exits.py:f")], num_workers=1, base_dir=tmp_path)
    assert time.monotonic() - t0 < 30  # not respawned until the 120 s start timeout


@pytest.mark.parametrize(
    "specs, kw, message",
    [
        ([], {}, "at least one"),
        ([RewardSpec("a", "gsm8k"), RewardSpec("a", "math")], {}, "unique"),
        ([RewardSpec("a", "gsm8k")], {"on_error": "ignore"}, "on_error"),
        ([RewardSpec("a", "gsm8k")], {"timeout_s": 0}, "timeout_s"),
    ],
)
def test_bad_manager_arguments(specs, kw, message):
    with pytest.raises(ValueError, match=message):
        RewardManager(specs, **kw)


def test_length_mismatch_and_closed():
    rm = RewardManager([RewardSpec("a", "exact_match")])
    with pytest.raises(ValueError, match="labels has 1 entries for 2 responses"):
        rm.score(["p", "p"], ["a", "b"], ["a"])
    with pytest.raises(ValueError, match="column 'data_source' has 1 entries"):
        rm.score(["p", "p"], ["a", "b"], ["a", "b"], {"data_source": ["x"]})
    rm.close()
    rm.close()
    with pytest.raises(RewardError, match="after close"):
        rm.score(["p"], ["a"], ["a"])


def test_unpicklable_column_is_a_sample_failure():
    with manager(RewardSpec("v", U + "columns_var_kw"), on_error="score") as rm:
        res = rm.score(["p", "p"], ["a", "b"], ["x", "y"], {"cb": [1, lambda: 0]})
        assert res.components["v"] == [2.0, 0.0] and res.errors == 1
        assert rm.score(["p"], ["a"], ["x"]).scores == [1.0]  # prompt only

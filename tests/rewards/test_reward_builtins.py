"""Built-in reward functions against tables of inputs and expected rewards (CPU, fast)."""
import doctest
import gzip
import json
from pathlib import Path

import pytest

from rewards import builtins, get_reward, list_rewards

GSM8K = Path(__file__).resolve().parents[2] / "data" / "gsm8k" / "raw" / "train.jsonl.gz"  # shipped with the project


def test_doctests():
    result = doctest.testmod(builtins)
    assert result.attempted > 10 and result.failed == 0


def test_registry_names():
    assert {"gsm8k", "math", "exact_match", "format_regex", "length_penalty", "overlong_penalty", "tiny_arithmetic", "remote"} <= set(list_rewards())
    with pytest.raises(KeyError, match="no reward function named 'nope'"):
        get_reward("nope")


def test_registry_rejects_duplicates():
    from rewards.registry import register_reward

    with pytest.raises(ValueError, match="already registered"):
        register_reward("gsm8k")(lambda response, label: 0.0)


@pytest.mark.parametrize(
    "response, label, kwargs, expected",
    [
        ("... so 72 clips.\n#### 72", "72", {}, 1.0),
        ("#### 72", "Natalia sold 48/2 = 24 clips.\n#### 72", {}, 1.0),
        ("#### 1,200", "1200", {}, 1.0),
        ("#### $1,200.00", "1,200", {}, 1.0),
        ("#### 72.0", "72", {}, 1.0),
        ("#### 072", "72", {}, 1.0),
        ("#### 72.", "72", {}, 1.0),
        ("#### -5", "-5", {}, 1.0),
        ("#### 0.5", ".5", {}, 1.0),
        ("#### 73", "72", {}, 0.0),
        ("#### 73", "72", {"format_score": 0.1}, 0.1),
        ("The answer is 72", "72", {}, 0.0),  # strict needs ####
        ("The answer is 72", "72", {"format_score": 0.1}, 0.0),  # no answer at all: 0
        ("The answer is 72.", "72", {"method": "flexible"}, 1.0),
        ("It costs $1,200 in total", "1200", {"method": "flexible"}, 1.0),
        ("first 72 then 3", "72", {"method": "flexible"}, 0.0),  # last number counts
        ("#### 72\n#### 5", "5", {}, 1.0),  # last #### counts
        ("#### 72", "72", {"score": 2.0}, 2.0),
        ("", "72", {"method": "flexible"}, 0.0),
    ],
)
def test_gsm8k_table(response, label, kwargs, expected):
    assert builtins.gsm8k(response, label, **kwargs) == pytest.approx(expected)


def _gold_and_altered(answer: str):
    gold = answer.split("####")[-1].strip()
    n = int(gold.replace(",", ""))
    altered = answer[: answer.rindex("####")] + f"#### {n + 1}"
    return gold, altered


def test_gsm8k_real_data_gold_scores_one_altered_zero():
    with gzip.open(GSM8K, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    assert len(rows) == 7473
    gold_scores, altered_scores = [], []
    for row in rows:
        gold, altered = _gold_and_altered(row["answer"])
        gold_scores.append(builtins.gsm8k(row["answer"], gold))
        altered_scores.append(builtins.gsm8k(altered, gold))
    assert sum(gold_scores) == len(rows)
    assert sum(altered_scores) == 0
    # The full solution as label works too (the "#### n" part is extracted).
    assert all(builtins.gsm8k(r["answer"], r["answer"]) == 1.0 for r in rows[:200])


@pytest.mark.parametrize(
    "response, label, expected",
    [
        (r"The answer is \boxed{\frac{1}{2}}.", "0.5", 1.0),
        (r"\boxed{\frac{2}{4}}", r"\frac{1}{2}", 1.0),
        (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", 1.0),
        (r"\boxed{x^2+2x+1}", r"(x+1)^2", 1.0),
        (r"\boxed{\{1,2\}}", r"\{2,1\}", 1.0),
        (r"first \boxed{3} then \boxed{4}", "4", 1.0),  # last box counts
        (r"\boxed{3}", "4", 0.0),
        (r"\boxed{\frac{1}{3}}", "0.5", 0.0),
        ("the answer is 0.5", "0.5", 0.0),  # no box
        (r"\boxed{\frac{1}{2}", "0.5", 0.0),  # unclosed
        (r"\boxed{5}", r"The answer is \boxed{5}", 1.0),
        (r"\fbox{7}", "7", 1.0),
    ],
)
def test_math_table(response, label, expected):
    assert builtins.math_reward(response, label) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"\boxed{a{b}c}", "a{b}c"),
        (r"x \boxed{\frac{\sqrt{2}}{2}} y", r"\frac{\sqrt{2}}{2}"),
        (r"\boxed {1}", "1"),
        (r"\boxed 12 apples", "12"),
        (r"\boxed{1", None),
        (r"\boxed", None),
        ("nothing", None),
    ],
)
def test_last_boxed_table(text, expected):
    assert builtins.last_boxed(text) == expected


@pytest.mark.parametrize(
    "response, label, kwargs, expected",
    [
        ("Paris", "Paris", {}, 1.0),
        ("  Paris\n", "Paris", {}, 1.0),
        ("New \t York", "New York", {}, 1.0),
        ("  Paris", "Paris", {"normalize_whitespace": False}, 0.0),
        ("paris", "Paris", {}, 0.0),
        ("paris", "Paris", {"ignore_case": True}, 1.0),
        ("42", 42, {}, 1.0),
        ("Paris!", "Paris", {}, 0.0),
    ],
)
def test_exact_match_table(response, label, kwargs, expected):
    assert builtins.exact_match(response, label, **kwargs) == expected


THINK = r"<think>.*?</think>\s*<answer>.*?</answer>"


@pytest.mark.parametrize(
    "response, kwargs, expected",
    [
        ("<think>x</think><answer>1</answer>", {"pattern": THINK}, 1.0),
        ("<think>a\nb</think>\n<answer>1</answer>", {"pattern": THINK}, 1.0),
        ("<think>a\nb</think>\n<answer>1</answer>", {"pattern": THINK, "dotall": False}, 0.0),
        ("so <answer>1</answer>", {"pattern": THINK}, 0.0),
        ("so <answer>1</answer>", {"pattern": "<answer>", "mode": "search"}, 1.0),
        ("so <answer>1</answer>", {"pattern": "<answer>"}, 0.0),
    ],
)
def test_format_regex_table(response, kwargs, expected):
    assert builtins.format_regex(response, None, **kwargs) == expected


def test_format_regex_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        builtins.format_regex("x", None, pattern="x", mode="match")


@pytest.mark.parametrize(
    "length, response_length, expected",
    [
        (0, None, 0.0),
        (80, None, 0.0),  # = max - cache: still free
        (90, None, -0.5),
        (95, None, -0.75),
        (100, None, -1.0),
        (150, None, -1.0),
        (10, 90, -0.5),  # token count from the columns wins over characters
        (500, 20, 0.0),
    ],
)
def test_overlong_penalty_table(length, response_length, expected):
    fn = builtins.overlong_penalty
    got = fn("x" * length, None, max_length=100, cache_length=20, response_length=response_length)
    assert got == pytest.approx(expected)
    assert get_reward("length_penalty") is fn


@pytest.mark.parametrize(
    "response, label, expected",
    [
        ("432", "432", 1.0),
        ("432  \n", "432", 1.0),
        (" 432", "432", 1.0),
        ("482", "432", 0.5 * 2 / 3),
        ("431", "432", 0.5 * 2 / 3),
        ("32", "432", 0.5 * 2 / 3),  # right-aligned: 3 and 2 match
        ("1432", "432", 0.5 * 3 / 4),
        ("999", "432", 0.0),
        ("0432", "432", 0.5 * 3 / 4),
        ("", "432", 0.0),
        ("   ", "432", 0.0),
        ("43 2", "432", 0.0),
        ("-432", "432", 0.0),
        ("432\n347+85=", "432", 0.0),  # the model kept going: not digits
        ("7", 7, 1.0),
        ("٤٣٢", "432", 0.0),  # non-ASCII digits are not digits here
    ],
)
def test_tiny_arithmetic_table(response, label, expected):
    assert builtins.tiny_arithmetic(response, label) == pytest.approx(expected)

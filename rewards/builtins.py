"""Built-in reward functions: plain functions with doctests, registered by name.

Each is `fn(response, label, **kwargs) -> float`: `response` is the generated text,
`label` the dataset's reference. Keyword arguments come from `RewardSpec.kwargs` and,
when the name matches, from dataset columns (e.g. `response_length`). They run in the
controller process: keep them fast and free of side effects.
"""
from __future__ import annotations

import re
import threading
from decimal import Decimal, InvalidOperation

from rewards.registry import register_reward

# ----------------------------------------------------------------------------- gsm8k

# "1,234.5", "$12", "-3", ".5"; thousands separators only in groups of three so a
# list like "3,4" is not read as 34.
_NUMBER_RE = re.compile(r"-?\$?-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")
_STRICT_RE = re.compile(r"####\s*(" + _NUMBER_RE.pattern + ")")


def normalize_number(text: str) -> str | None:
    """Canonical decimal form of a number written as text, or None if it is not one.

    >>> [normalize_number(s) for s in ["1,200", "$5", "72.0", "007", "-0", "3.50", "1e3", "x"]]
    ['1200', '5', '72', '7', '0', '3.5', None, None]
    """
    s = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    if not re.fullmatch(r"-*(\d+(\.\d*)?|\.\d+)", s):
        return None
    negative = s.count("-") % 2 == 1
    try:
        d = Decimal(s.lstrip("-"))
    except InvalidOperation:  # pragma: no cover - the regex above already guards this
        return None
    d = -d if negative and d != 0 else d
    return format(d.normalize(), "f")


def extract_gsm8k_answer(text: str, method: str = "strict") -> str | None:
    """The final answer of a GSM8K-style solution, normalised, or None.

    strict: the number after the last "####"; flexible: the last number anywhere.

    >>> extract_gsm8k_answer("so 48+24 = 72 clips.\\n#### 72")
    '72'
    >>> extract_gsm8k_answer("The answer is $1,200.00.", method="strict") is None
    True
    >>> extract_gsm8k_answer("The answer is $1,200.00.", method="flexible")
    '1200'
    """
    if method == "strict":
        matches = _STRICT_RE.findall(text)
    elif method == "flexible":
        matches = _NUMBER_RE.findall(text)
    else:
        raise ValueError(f"gsm8k: method must be 'strict' or 'flexible', got {method!r}")
    for m in reversed(matches):
        n = normalize_number(m)
        if n is not None:
            return n
    return None


@register_reward("gsm8k")
def gsm8k(response: str, label, *, method: str = "strict", format_score: float = 0.0, score: float = 1.0) -> float:
    """`score` if the final answer equals the label, `format_score` if an answer was
    found but is wrong, 0.0 if none was found. `label` is the number or a full
    GSM8K solution ending in "#### <number>".

    >>> gsm8k("12/60 = 0.2 per minute; 0.2 x 50 = 10.\\n#### 10", "10")
    1.0
    >>> gsm8k("#### $1,200", "So...\\n#### 1200")
    1.0
    >>> gsm8k("#### 11", "10", format_score=0.1)
    0.1
    >>> gsm8k("I think it is 10", "10"), gsm8k("I think it is 10", "10", method="flexible")
    (0.0, 1.0)
    """
    pred = extract_gsm8k_answer(response, method)
    if pred is None:
        return 0.0
    label = str(label)
    gold = extract_gsm8k_answer(label, "strict") if "####" in label else normalize_number(label)
    if gold is None:
        gold = label.strip()
    return float(score) if Decimal(pred) == _to_decimal(gold) else float(format_score)


def _to_decimal(s: str) -> Decimal | None:
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


# ------------------------------------------------------------------------------ math


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), nested braces included.

    >>> last_boxed(r"so \\boxed{1} or rather \\boxed{\\frac{1}{\\sqrt{2}}}.")
    '\\\\frac{1}{\\\\sqrt{2}}'
    >>> last_boxed(r"\\boxed 5"), last_boxed("no box"), last_boxed(r"\\boxed{unclosed")
    ('5', None, None)
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    after = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    i = after
    while i < len(text) and text[i].isspace():
        i += 1
    if not text.startswith("{", i):  # "\boxed 5": the argument is the next token
        m = re.match(r"\s+([^\s$]+)", text[after:])
        return m.group(1) if m else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


@register_reward("math")
def math_reward(response: str, label, *, timeout_s: int = 5) -> float:
    """1.0 if the last \\boxed{} answer is symbolically equal to the label (math_verify).

    The label may be bare LaTeX ("\\frac{1}{2}") or contain its own \\boxed{}.

    >>> math_reward(r"so the answer is \\boxed{\\frac{1}{2}}", "0.5")
    1.0
    >>> math_reward(r"\\boxed{\\frac{2}{4}}", r"\\boxed{\\dfrac12}"), math_reward(r"\\boxed{3}", "4")
    (1.0, 0.0)
    >>> math_reward("the answer is 1/2", "0.5")  # no \\boxed{}: no answer
    0.0
    """
    pred = last_boxed(response)
    if pred is None:
        return 0.0
    label = str(label)
    gold = last_boxed(label) or label
    if pred.replace(" ", "") == gold.replace(" ", ""):
        return 1.0
    from math_verify import parse, verify  # lazy: pulls in sympy

    # math_verify's timeouts use signal.alarm, which only works in the main thread.
    t = timeout_s if threading.current_thread() is threading.main_thread() else None
    g = parse("\\boxed{" + gold + "}", parsing_timeout=t)
    p = parse("\\boxed{" + pred + "}", parsing_timeout=t)
    return 1.0 if g and p and verify(g, p, timeout_seconds=t) else 0.0


# -------------------------------------------------------------------- text matching


@register_reward("exact_match")
def exact_match(response: str, label, *, normalize_whitespace: bool = True, ignore_case: bool = False) -> float:
    """1.0 if response equals str(label); by default ends stripped, inner runs of
    whitespace collapsed to one space.

    >>> exact_match("  Paris \\n", "Paris"), exact_match("New   York", "New York")
    (1.0, 1.0)
    >>> exact_match("paris", "Paris"), exact_match("paris", "Paris", ignore_case=True)
    (0.0, 1.0)
    >>> exact_match(" Paris", "Paris", normalize_whitespace=False)
    0.0
    """
    a, b = response, str(label)
    if normalize_whitespace:
        a, b = " ".join(a.split()), " ".join(b.split())
    if ignore_case:
        a, b = a.casefold(), b.casefold()
    return 1.0 if a == b else 0.0


@register_reward("format_regex")
def format_regex(response: str, label=None, *, pattern: str, mode: str = "fullmatch", dotall: bool = True) -> float:
    """1.0 if `pattern` matches the whole response (mode="fullmatch") or anywhere in
    it (mode="search"). With dotall, "." also matches newlines.

    >>> p = r"<think>.*</think>\\s*<answer>.*</answer>"
    >>> format_regex("<think>a\\nb</think> <answer>4</answer>", None, pattern=p)
    1.0
    >>> format_regex("hi <answer>4</answer>", None, pattern=p), format_regex("x <answer>4</answer>", None, pattern="<answer>", mode="search")
    (0.0, 1.0)
    """
    flags = re.DOTALL if dotall else 0
    if mode == "fullmatch":
        return 1.0 if re.fullmatch(pattern, response, flags) else 0.0
    if mode == "search":
        return 1.0 if re.search(pattern, response, flags) else 0.0
    raise ValueError(f"format_regex: mode must be 'fullmatch' or 'search', got {mode!r}")


# ------------------------------------------------------------------------ length


@register_reward("overlong_penalty")
def overlong_penalty(response: str, label=None, *, max_length: int, cache_length: int, response_length: int | None = None) -> float:
    """Soft overlong punishment of DAPO (Yu et al. 2025, arXiv:2503.14476, Eq. 13).

    0 up to max_length - cache_length, then falls linearly to -1 at max_length, and
    is -1 beyond. Length is `response_length` when given (in tokens: `rlhf train` passes
    every response's token count under that name), else len(response) in characters
    (standalone use). Registered also as "length_penalty".

    >>> [overlong_penalty("x" * n, max_length=10, cache_length=4) for n in (3, 6, 8, 10, 12)]
    [0.0, 0.0, -0.5, -1.0, -1.0]
    >>> overlong_penalty("short text", max_length=100, cache_length=20, response_length=90)
    -0.5
    """
    if not 0 < cache_length <= max_length:
        raise ValueError(f"overlong_penalty: need 0 < cache_length <= max_length, got {cache_length}, {max_length}")
    n = len(response) if response_length is None else int(response_length)
    free = max_length - cache_length
    if n <= free:
        return 0.0
    if n <= max_length:
        return (free - n) / cache_length
    return -1.0


register_reward("length_penalty")(overlong_penalty)


# ------------------------------------------------------------------ tiny arithmetic


@register_reward("tiny_arithmetic")
def tiny_arithmetic(response: str, label) -> float:
    """Verifier of the tiny synthetic task ("347+85=" -> "432").

    1.0 on an exact match (response stripped); for a wrong string of digits, partial
    credit 0.5 * (digits equal when right-aligned) / max(len(label), len(response));
    0.0 for anything else.

    >>> tiny_arithmetic("432 \\n", "432"), round(tiny_arithmetic("482", "432"), 4)
    (1.0, 0.3333)
    >>> tiny_arithmetic("1432", "432"), tiny_arithmetic("", "432"), tiny_arithmetic("43a", "432")
    (0.375, 0.0, 0.0)
    """
    r, gold = response.strip(), str(label).strip()
    if r == gold:
        return 1.0
    if not (r.isascii() and r.isdigit()):
        return 0.0
    same = sum(a == b for a, b in zip(reversed(r), reversed(gold)))
    return 0.5 * same / max(len(gold), len(r))


# ------------------------------------------------------------- tiny agentic task


@register_reward("tiny_product")
def tiny_product(response: str, label) -> float:
    """Verifier of the tiny agentic task ("123*45=" -> "5535", rlhf/tiny/agent_task.py):
    1.0 if the final answer, the text after the last </tool_response> (or the whole
    response if no tool answered), stripped, equals the label; else 0.0.

    >>> call = '<tool_call>{"name": "calculator", "arguments": {"expression": "123*45"}}</tool_call>'
    >>> tiny_product(call + "<tool_response>5535</tool_response>5535", "5535")
    1.0
    >>> tiny_product(call + "<tool_response>5535</tool_response>5536", "5535")
    0.0
    >>> tiny_product(" 5535\\n", "5535"), tiny_product("5535 is it", "5535"), tiny_product(call, "5535")
    (1.0, 0.0, 0.0)
    >>> tiny_product("<tool_response>error: x</tool_response>55<tool_response>5535</tool_response> 5535", 5535)
    1.0
    """
    return 1.0 if response.rsplit("</tool_response>", 1)[-1].strip() == str(label).strip() else 0.0

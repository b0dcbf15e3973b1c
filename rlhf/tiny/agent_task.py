"""The tiny agentic task: 3-digit x 2-digit products, with a `calculator` tool.

A prompt is "123*45=" and the label "5535". The ~1M-parameter tiny policy cannot
multiply in its head, so the way to the answer is one tool call (plain text, the
format of rlhf.agent.format; the tiny tokenizer has no chat template):

    123*45=<tool_call>{"name": "calculator", "arguments": {"expression": "123*45"}}</tool_call>
           <tool_response>5535</tool_response>5535<eos>

The policy writes the call and, after the observation (written by the environment,
loss-masked), the final answer. The answer is the text after the last
</tool_response> (or the whole response if no tool was called), stripped.

Why the warm start is taught by a *noisy teacher* (as in rlhf/tiny/task.py): RL
sharpens what sampling already finds. Each transcript is, with the probabilities of
the spec, one of
  correct   the right call, then the result copied;
  guess     no call: a plausible wrong product (right leading digits) answered directly;
  bad_key   a call with "expr" instead of "expression", the loop's "bad arguments" error, a guess;
  unquoted  the expression written unquoted (not JSON), the format error, a guess;
  no_brace  the arguments object left unclosed (not JSON), the format error, a guess.
The teacher is careful on large multipliers (>= `careful_from`) and sloppy on the
others, where a malformed "expr" call is its most likely move. The warm-started
policy copies that: greedy decoding is right on the careful share only (~22%),
while a few samples at temperature 1 often contain the correct call (high pass@8).
The reward (`rewards.builtins.tiny_product`) then has something to select.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from rlhf.agent.format import CALL_CLOSE, RESPONSE_CLOSE, format_call

TOOL = "calculator"
MODES = ("correct", "guess", "bad_key", "unquoted", "no_brace")
# What the loop answers to a call whose arguments do not fit the tool's JSON schema
# (rlhf.agent.tools: "bad arguments: " + jsonschema's best-match message); for the
# calculator called with {"expr": ...} it reads so.
BAD_ARGUMENTS = "bad arguments: 'expression' is a required property"


def product_problems() -> list[dict]:
    """Every a*b with 100 <= a <= 999, 10 <= b <= 99 (81,000), in a fixed order."""
    return [{"prompt": f"{a}*{b}=", "label": str(a * b)} for a in range(100, 1000) for b in range(10, 100)]


def make_splits(n_train: int, n_eval: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Disjoint train and held-out splits, drawn uniformly without replacement."""
    problems = product_problems()
    if n_train + n_eval > len(problems):
        raise ValueError(f"only {len(problems)} distinct problems; asked for {n_train} + {n_eval}")
    random.Random(seed).shuffle(problems)
    return problems[n_eval: n_eval + n_train], problems[:n_eval]


def operands(prompt: str) -> tuple[str, str]:
    a, b = prompt.rstrip("=").split("*")
    return a, b


def is_careful(prompt: str, careful_from: int) -> bool:
    """Whether the teacher is careful on this prompt (the multiplier is large)."""
    return int(operands(prompt)[1]) >= careful_from


def plausible_guess(label: str, rng: random.Random, keep: int = 2) -> str:
    """A wrong product that looks right: the leading `keep` digits, then random ones."""
    while True:
        guess = label[:keep] + "".join(rng.choice("0123456789") for _ in label[keep:])
        if guess != label:
            return guess


def malformed_call(mode: str, expression: str) -> str:
    """The teacher's slips when writing the call (the text up to </tool_call>)."""
    if mode == "bad_key":
        return format_call(TOOL, {"expr": expression})
    body = json.dumps({"name": TOOL, "arguments": {"expression": expression}})
    if mode == "unquoted":
        return "<tool_call>" + body.replace(f'"{expression}"', expression) + CALL_CLOSE
    if mode == "no_brace":
        return "<tool_call>" + body[:-1] + CALL_CLOSE
    raise ValueError(f"not a malformed mode: {mode!r}")


def teacher_transcript(row: dict, mode: str, rng: random.Random) -> list[tuple[str, bool]]:
    """The response as (text, written by the policy) segments; the EOS is the encoder's."""
    label = row["label"]
    if mode == "guess":
        return [(plausible_guess(label, rng), True)]
    expression = "*".join(operands(row["prompt"]))
    call = format_call(TOOL, {"expression": expression}) if mode == "correct" else malformed_call(mode, expression)
    observation = observe(call)
    answer = observation_result(observation) if mode == "correct" else plausible_guess(label, rng)
    return [(call, True), (observation, False), (answer, True)]


def draw_mode(row: dict, rng: random.Random, teacher: dict) -> str:
    """One of MODES, with the careful or the sloppy probabilities of `teacher`."""
    probs = teacher["careful"] if is_careful(row["prompt"], teacher["careful_from"]) else teacher["sloppy"]
    return rng.choices(MODES, weights=[probs[m] for m in MODES])[0]


# ------------------------------------------------------------------ the environment


def calculate(expression: str) -> str:
    """The built-in calculator's answer (rlhf.agent.tools); ValueError with its message.

    >>> calculate("123*45"), calculate("-(2+3)*4")
    ('5535', '-20')
    """
    result = _calculator().call({"expression": expression}, timeout_s=5.0, max_output_chars=200)
    if result.error is not None:
        raise ValueError(result.error)
    return result.text


def observe(turn: str) -> str | None:
    """What the agent loop appends after a policy turn, from the loop's own tool
    environment: None if the turn asked for no tool (the trajectory ends), else the tool's
    result or the error, as observation text."""
    from rlhf.agent.env import ToolEnvironment

    step = ToolEnvironment([_calculator()], timeout_s=5.0).step(turn)
    return None if step.done else step.observation


def _calculator():
    from rlhf.agent.tools import BUILTIN_TOOLS

    return BUILTIN_TOOLS[TOOL]


def observation_result(observation: str) -> str:
    return observation[len("<tool_response>"): -len(RESPONSE_CLOSE)]


def is_error(observation: str | None) -> bool:
    return observation is not None and observation.startswith("<tool_response>error: ")


def final_answer(response: str) -> str:
    """The text after the last </tool_response> (or the whole response), stripped."""
    return response.rsplit(RESPONSE_CLOSE, 1)[-1].strip()


def write_jsonl(rows: list[dict], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)

"""The tool-call text format: how a policy calls a tool and how the result comes back.

One format for every model, the Hermes/Qwen2.5 one (JSON inside tags):

    policy:       <tool_call>{"name": "calculator", "arguments": {"expression": "123*45"}}</tool_call>
    observation:  <tool_response>5535</tool_response>

Models with a chat template render the tool schemas and the tool messages with it
(`rlhf.agent.chat`); the tiny character-level tokenizer has no template, so its prompts
and observations are these tags as plain text.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
_CALL_RE = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedTurn:
    """What a policy turn asked for: its tool calls, or why its call could not be read."""
    calls: list[ToolCall]
    error: str | None = None     # a format error (told to the policy, counted in metrics)

    @property
    def wants_tools(self) -> bool:
        return bool(self.calls) or self.error is not None


def format_call(name: str, arguments: dict) -> str:
    """The text a policy writes to call `name`.

    >>> format_call("calculator", {"expression": "2*3"})
    '<tool_call>{"name": "calculator", "arguments": {"expression": "2*3"}}</tool_call>'
    """
    return CALL_OPEN + json.dumps({"name": name, "arguments": arguments}) + CALL_CLOSE


def format_response(text: str) -> str:
    """The observation text that carries one tool's result back (plain tag format).

    >>> format_response("6")
    '<tool_response>6</tool_response>'
    """
    return RESPONSE_OPEN + text + RESPONSE_CLOSE


def parse_turn(text: str) -> ParsedTurn:
    """The tool calls in one policy turn. A call that is opened but not closed, is not
    JSON, or lacks a string "name" / an object "arguments" is a format error.

    >>> parse_turn('x <tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>').calls
    [ToolCall(name='f', arguments={'a': 1})]
    >>> parse_turn("the answer is 4").wants_tools
    False
    >>> parse_turn('<tool_call>{"name": "f"').error
    'tool call not closed with </tool_call>'
    """
    bodies = _CALL_RE.findall(text)
    tail = text[text.rfind(CALL_CLOSE) + len(CALL_CLOSE):] if bodies else text
    if CALL_OPEN in tail:
        return ParsedTurn([], f"tool call not closed with {CALL_CLOSE}")
    calls = []
    for body in bodies:
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as exc:
            return ParsedTurn(calls, f"tool call is not valid JSON ({exc.msg} at char {exc.pos})")
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return ParsedTurn(calls, 'tool call needs a string "name"')
        arguments = obj.get("arguments", {})
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        if not isinstance(arguments, dict):
            return ParsedTurn(calls, 'tool call "arguments" must be a JSON object')
        calls.append(ToolCall(obj["name"], arguments))
    return ParsedTurn(calls)

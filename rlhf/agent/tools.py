"""Tools: functions with a JSON schema that a policy calls (format in `rlhf.agent.format`).

    Tool(name, description, parameters, fn)     parameters: the JSON schema of the arguments
                                                object (OpenAI function-calling shape)
    tool.schema()                               what `tokenizer.apply_chat_template(tools=...)` takes
    tool.call(arguments, timeout_s=, max_output_chars=) -> ToolResult   never raises

A tool raises `ToolError("message")` for a clean error told to the policy. Built-ins:
`calculator` (arithmetic with `ast`, no eval) and `python` (code run by `rlhf.agent.sandbox`).
`load_tool("calculator" | "path/to/file.py:name", base_dir)` finds one; `name` is a Tool or a
plain function (its schema then comes from its signature and docstring).

A plain-Python tool that hangs cannot be killed: the call gives up after `timeout_s` (plus a
short grace for tools that stop themselves, like `python`) and its thread is abandoned.
Tools that may hang or misbehave belong in the sandbox.
"""
from __future__ import annotations

import ast
import asyncio
import contextvars
import importlib
import inspect
import math
import operator
import threading
import time
import typing
from dataclasses import dataclass
from typing import Any, Callable

import jsonschema

from rewards.loader import _import_file, _is_file_target, describe_exception, resolve_spec_string
from rlhf.agent.sandbox import run_sandboxed

_GRACE_S = 1.0  # tools that enforce the timeout themselves (python) report before this


class ToolError(Exception):
    """Raised by a tool: `message` is the one-line error; `output` (if given) is the text the
    policy sees instead of "error: message" (e.g. a traceback); `timed_out` marks a timeout."""

    def __init__(self, message: str, *, output: str | None = None, timed_out: bool = False):
        super().__init__(message)
        self.output, self.timed_out = output, timed_out


@dataclass
class ToolResult:
    text: str            # the observation for the policy
    error: str | None    # one line: what went wrong (None: fine)
    seconds: float
    timed_out: bool = False
    bad_arguments: bool = False  # the call did not fit the tool's schema (a format error: the tool never ran)


@dataclass(frozen=True)
class CallLimits:
    timeout_s: float
    max_output_chars: int


_LIMITS: contextvars.ContextVar[CallLimits] = contextvars.ContextVar("tool_call_limits")


def call_limits() -> CallLimits:
    """The limits of the current `Tool.call`, for tools that enforce them themselves."""
    return _LIMITS.get(CallLimits(timeout_s=10.0, max_output_chars=4000))


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    fn: Callable[..., str]

    def __post_init__(self):
        try:
            jsonschema.validators.validator_for(self.parameters).check_schema(self.parameters)
        except jsonschema.SchemaError as e:
            raise ValueError(f"tool {self.name!r}: invalid parameters schema: {e.message}") from None

    def schema(self) -> dict:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def call(self, arguments: dict, *, timeout_s: float, max_output_chars: int) -> ToolResult:
        """Validate `arguments`, run the tool within `timeout_s`, cut its output; never raises."""
        start = time.monotonic()
        bad = self._argument_error(arguments)
        if bad:
            return ToolResult(f"error: {bad}", bad, time.monotonic() - start, bad_arguments=True)
        outcome = _run_with_timeout(self.fn, arguments, CallLimits(timeout_s, max_output_chars))
        seconds = time.monotonic() - start
        if outcome is None:
            err = f"timed out after {timeout_s:g} s"
            return ToolResult(f"error: {err}", err, seconds, timed_out=True)
        kind, value = outcome
        if kind == "ok":
            return _cut(value if isinstance(value, str) else str(value), None, seconds, max_output_chars, False)
        if isinstance(value, ToolError):
            err = f"timed out after {timeout_s:g} s" if value.timed_out else str(value)
            text = value.output if value.output is not None else f"error: {err}"
            return _cut(text, err, seconds, max_output_chars, value.timed_out)
        err = f"crashed: {describe_exception(value)}"
        return _cut(f"error: {err}", err, seconds, max_output_chars, False)

    def _argument_error(self, arguments) -> str | None:
        if not isinstance(arguments, dict):
            return f"bad arguments: expected a JSON object, got {type(arguments).__name__}"
        validator = jsonschema.validators.validator_for(self.parameters)(self.parameters)
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return f"bad arguments: {error.message}" + (f" (at {where})" if where else "")


def _cut(text, error, seconds, limit, timed_out) -> ToolResult:
    if len(text) > limit:
        text = text[:limit]
        error = error or f"output over {limit} chars, cut"
    return ToolResult(text, error, seconds, timed_out)


def _run_with_timeout(fn, arguments, limits: CallLimits):
    """("ok", value) | ("error", exception) | None on timeout. A thread, so a hung tool
    costs a thread, not the caller."""
    box: list = []

    def target():
        _LIMITS.set(limits)
        try:
            value = fn(**arguments)
            if inspect.isawaitable(value):
                value = asyncio.run(_awaited(value))
            box.append(("ok", value))
        except BaseException as e:  # noqa: BLE001 - a tool's failure is a result
            box.append(("error", e))

    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), daemon=True, name="tool-call")
    thread.start()
    thread.join(limits.timeout_s + _GRACE_S)
    return box[0] if box else None


async def _awaited(x):
    return await x


# ------------------------------------------------------------------------ calculator

_MAX_EXPRESSION_CHARS = 1000
_MAX_INT_BITS = 4000  # ~1200 decimal digits
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_SYMBOL = {ast.BitXor: "^ (use ** for powers)", ast.BitAnd: "&", ast.BitOr: "|", ast.LShift: "<<",
           ast.RShift: ">>", ast.MatMult: "@", ast.Invert: "~", ast.Not: "not"}


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression: numbers, + - * / // % **, parentheses.

    >>> calculate("123*45")
    '5535'
    >>> calculate("(1 + 2) / 4")
    '0.75'
    """
    if len(expression) > _MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression too long ({len(expression)} chars > {_MAX_EXPRESSION_CHARS})")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ToolError(f"invalid expression: {e.msg}") from None
    except (RecursionError, MemoryError):
        raise ToolError("expression too deeply nested") from None
    try:
        value = _evaluate(tree.body)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("result too large") from None
    except RecursionError:
        raise ToolError("expression too deeply nested") from None
    return _show_number(value)


def _evaluate(node):
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ToolError(f"only numbers are allowed, not {node.value!r}")
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _bounded(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    raise ToolError(_refusal(node))


def _refusal(node) -> str:
    op = getattr(node, "op", None)
    if op is not None:
        return f"operator {_SYMBOL.get(type(op), type(op).__name__)} is not allowed"
    if isinstance(node, ast.Name):
        return f"names are not allowed ({node.id!r}): write the numbers"
    if isinstance(node, ast.Call):
        return "function calls are not allowed"
    if isinstance(node, ast.Attribute):
        return "attributes are not allowed"
    return f"{type(node).__name__} is not allowed: only numbers, + - * / // % ** and parentheses"


def _check_power(base, exponent):
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent > _MAX_INT_BITS or exponent * (abs(base).bit_length() - 1) > _MAX_INT_BITS:
            raise ToolError("result too large")
    if isinstance(exponent, float) or isinstance(base, float):
        if abs(exponent) > 1e6 and abs(base) > 1:
            raise ToolError("result too large")


def _bounded(value):
    if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        raise ToolError("result too large")
    if isinstance(value, complex):
        raise ToolError("result is not a real number")
    return value


def _show_number(value) -> str:
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ToolError("result is not finite")
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format(value, ".12g")


CALCULATOR = Tool(
    name="calculator",
    description="Evaluate an arithmetic expression (numbers, + - * / // % **, parentheses) and return the result.",
    parameters={"type": "object", "properties": {"expression": {"type": "string", "description": "e.g. 123*45"}},
                "required": ["expression"], "additionalProperties": False},
    fn=calculate,
)


# ---------------------------------------------------------------------------- python

PYTHON_MEMORY_MB = 1024


def run_python(code: str) -> str:
    """Run Python code in the sandbox; return what it printed (and its stderr if it failed)."""
    limits = call_limits()
    r = run_sandboxed(code, timeout_s=limits.timeout_s, cpu_s=limits.timeout_s, memory_mb=PYTHON_MEMORY_MB,
                      max_output_chars=limits.max_output_chars)
    if r.error is None:
        return r.stdout
    output = r.stdout + (("\n" if r.stdout and not r.stdout.endswith("\n") else "") + r.stderr if r.stderr else "")
    raise ToolError(r.error, output=output or f"error: {r.error}", timed_out=r.timed_out)


PYTHON = Tool(
    name="python",
    description="Run Python 3 code in a sandbox (no network, no files kept) and return what it prints.",
    parameters={"type": "object", "properties": {"code": {"type": "string", "description": "Python source"}},
                "required": ["code"], "additionalProperties": False},
    fn=run_python,
)

BUILTIN_TOOLS: dict[str, Tool] = {t.name: t for t in (CALCULATOR, PYTHON)}


# ---------------------------------------------------------------------------- loading


def load_tool(spec: str, base_dir=None) -> Tool:
    """A built-in name, or "path/to/file.py:name" / "package.module:name" naming a Tool or a
    plain function. ValueError (one line, naming the spec) when it cannot."""
    if ":" not in spec:
        if spec in BUILTIN_TOOLS:
            return BUILTIN_TOOLS[spec]
        raise ValueError(f"tool {spec!r}: no built-in tool of that name (built-ins: {', '.join(BUILTIN_TOOLS)}; "
                         "or 'path/to/file.py:name')")
    obj = _load_object(spec, base_dir)
    if isinstance(obj, Tool):
        return obj
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return tool_from_function(obj)
    raise ValueError(f"tool {spec!r}: is a {type(obj).__name__}, not a Tool or a function")


def _load_object(spec, base_dir):
    try:
        resolved = resolve_spec_string(spec, base_dir)
    except FileNotFoundError:
        raise ValueError(f"tool {spec!r}: file not found (looked in {base_dir or '.'} and the working directory)") from None
    except ValueError as e:
        raise ValueError(f"tool {spec!r}: {e}") from None
    target, _, attr = resolved.rpartition(":")
    try:
        module = _import_file(target) if _is_file_target(target) else importlib.import_module(target)
    except Exception as e:  # noqa: BLE001 - the user's file failed to import
        raise ValueError(f"tool {spec!r}: cannot import {target}: {describe_exception(e)}") from None
    if not hasattr(module, attr):
        found = sorted(n for n, v in vars(module).items()
                       if not n.startswith("_") and (isinstance(v, Tool) or inspect.isfunction(v)))
        raise ValueError(f"tool {spec!r}: no {attr!r} in {target} (tools and functions there: {', '.join(found) or 'none'})")
    return getattr(module, attr)


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def tool_from_function(fn: Callable) -> Tool:
    """A Tool whose schema comes from `fn`'s signature (type hints: str, int, float, bool,
    list, dict, Optional, Literal) and whose description is its docstring's first line."""
    name = fn.__name__
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # noqa: BLE001 - an unresolvable annotation
        raise ValueError(f"tool {name!r}: cannot read its type hints ({e})") from None
    properties, required, extra = {}, [], False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            raise ValueError(f"tool {name!r}: *{p.name} cannot be given by name; use named parameters")
        if p.kind is p.VAR_KEYWORD:
            extra = True
            continue
        properties[p.name] = _json_type(hints.get(p.name), name, p.name)
        if p.default is p.empty:
            required.append(p.name)
    doc = inspect.getdoc(fn) or ""
    parameters = {"type": "object", "properties": properties, "required": required, "additionalProperties": extra}
    return Tool(name, doc.splitlines()[0] if doc else name, parameters, fn)


def _json_type(hint: Any, tool: str, param: str) -> dict:
    if hint is None or hint is Any:
        return {}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        options = [a for a in args if a is not type(None)]
        return _json_type(options[0], tool, param) if len(options) == 1 else {}
    base = origin or hint
    if base in _JSON_TYPES:
        return {"type": _JSON_TYPES[base]}
    raise ValueError(f"tool {tool!r}: parameter {param!r} has type {hint!r}; use str, int, float, bool, list or dict")

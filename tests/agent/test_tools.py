"""Tool.call's contract, the calculator, the python tool and load_tool."""
import textwrap
import time
from typing import Literal, Optional

import pytest

from rlhf.agent.tools import BUILTIN_TOOLS, CALCULATOR, PYTHON, Tool, ToolError, calculate, load_tool, tool_from_function

CALL = dict(timeout_s=2.0, max_output_chars=200)


@pytest.mark.parametrize("expression, expected", [
    ("123*45", "5535"), ("123 * 45 + 7", "5542"), ("7/2", "3.5"), ("10/2", "5"), ("2**10", "1024"),
    ("-3**2", "-9"), ("(1 + 2) * -4", "-12"), ("17 // 5", "3"), ("17 % 5", "2"), ("0.1 + 0.2", "0.3"),
    ("2**-1", "0.5"), ("1/3", "0.333333333333"), ("999*99", "98901"), ("2**100", str(2**100)),
])
def test_calculator_results(expression, expected):
    assert calculate(expression) == expected


@pytest.mark.parametrize("expression, message", [
    ("x + 1", "names are not allowed"), ("abs(-3)", "function calls are not allowed"),
    ("(1).real", "attributes are not allowed"), ("__import__('os')", "function calls are not allowed"),
    ("9**9**9", "result too large"), ("10**100000", "result too large"), ("2.0**1e7", "result too large"),
    ("1/0", "division by zero"), ("5 % 0", "division by zero"), ("2^3", "use ** for powers"),
    ("1 <", "invalid expression"), ("'a' * 3", "only numbers"), ("True + 1", "only numbers"),
    ("1e308 * 10", "not finite"), ("[1, 2]", "List is not allowed"), ("1 if 1 else 2", "IfExp is not allowed"),
])
def test_calculator_refuses(expression, message):
    start = time.monotonic()
    with pytest.raises(ToolError, match=message.replace("*", r"\*")):
        calculate(expression)
    assert time.monotonic() - start < 0.5


def test_calculator_refuses_deep_nesting_and_long_input():
    with pytest.raises(ToolError, match="too deeply nested|too long"):
        calculate("(" * 900 + "1" + ")" * 900)
    with pytest.raises(ToolError, match="too long"):
        calculate("1+" * 600 + "1")


def test_schema_is_the_function_calling_shape():
    s = CALCULATOR.schema()
    assert s["type"] == "function" and s["function"]["name"] == "calculator"
    assert s["function"]["parameters"]["required"] == ["expression"]
    assert set(BUILTIN_TOOLS) == {"calculator", "python"}


def test_call_ok_and_bad_arguments():
    r = CALCULATOR.call({"expression": "123*45"}, **CALL)
    assert (r.text, r.error, r.timed_out) == ("5535", None, False)
    for args, message in [({}, "'expression' is a required property"), ({"expression": 5}, "5 is not of type 'string'"),
                          ({"expression": "1", "x": 2}, "Additional properties are not allowed"),
                          (["1"], "expected a JSON object")]:
        r = CALCULATOR.call(args, **CALL)
        assert r.error.startswith("bad arguments: ") and message in r.error, r
        assert r.text == "error: " + r.error and "\n" not in r.error


def make_tool(fn, **props):
    return Tool("t", "a test tool", {"type": "object", "properties": props}, fn)


def test_call_tool_error_exception_timeout_and_cut():
    r = CALCULATOR.call({"expression": "1/0"}, **CALL)
    assert (r.text, r.error) == ("error: division by zero", "division by zero")

    def broken():
        return {}["missing"]
    r = make_tool(broken).call({}, **CALL)
    assert r.error.startswith("crashed: KeyError: 'missing'") and "test_tools.py" in r.error

    start = time.monotonic()
    r = make_tool(lambda: time.sleep(30)).call({}, timeout_s=0.3, max_output_chars=100)
    assert r.timed_out and r.error == "timed out after 0.3 s" and time.monotonic() - start < 2.5

    r = make_tool(lambda: "y" * 500).call({}, **CALL)
    assert r.text == "y" * 200 and r.error == "output over 200 chars, cut"
    r = make_tool(lambda: 42).call({}, **CALL)
    assert (r.text, r.error) == ("42", None)

    async def coro(n: int):
        return n * 2
    assert tool_from_function(coro).call({"n": 4}, **CALL).text == "8"


def test_python_tool():
    r = PYTHON.call({"code": "print(sum(range(10)))"}, **CALL)
    assert (r.text, r.error) == ("45\n", None)
    r = PYTHON.call({"code": "print('before')\n1/0"}, **CALL)
    assert r.error == "exited with code 1: ZeroDivisionError: division by zero"
    assert r.text.startswith("before\n") and "ZeroDivisionError" in r.text
    r = PYTHON.call({"code": "import time; time.sleep(30)"}, timeout_s=0.5, max_output_chars=100)
    assert r.timed_out and r.error == "timed out after 0.5 s"
    r = PYTHON.call({"code": "print('z' * 1000)"}, **CALL)
    assert r.error.startswith("output over 200 chars, cut") and r.text == "z" * 200


def test_load_builtin_and_errors(tmp_path):
    assert load_tool("calculator") is CALCULATOR
    with pytest.raises(ValueError, match="tool 'calc': no built-in tool of that name"):
        load_tool("calc")
    with pytest.raises(ValueError, match=r"tool 'nope.py:f': file not found"):
        load_tool("nope.py:f", tmp_path)
    (tmp_path / "bad.py").write_text("raise RuntimeError('at import')\n")
    with pytest.raises(ValueError, match=r"tool 'bad.py:f': cannot import .*RuntimeError: at import"):
        load_tool("bad.py:f", tmp_path)


def test_load_from_file(tmp_path):
    (tmp_path / "mytools.py").write_text(textwrap.dedent('''
        from typing import Literal, Optional
        from rlhf.agent.tools import Tool

        def lookup(city: str, units: Literal["C", "F"] = "C", days: Optional[int] = None) -> str:
            """Weather for a city.

            More text that is not the description.
            """
            return f"{city}: 20 {units} for {days} days"

        SHOUT = Tool("shout", "Upper-case a text", {"type": "object", "properties": {"text": {"type": "string"}},
                     "required": ["text"]}, lambda text: text.upper())
        NOT_A_TOOL = 3
    '''))
    tool = load_tool("mytools.py:lookup", tmp_path)
    assert tool.name == "lookup" and tool.description == "Weather for a city."
    assert tool.parameters == {"type": "object", "additionalProperties": False, "required": ["city"], "properties": {
        "city": {"type": "string"}, "units": {"enum": ["C", "F"]}, "days": {"type": "integer"}}}
    assert tool.call({"city": "Oslo", "days": 3}, **CALL).text == "Oslo: 20 C for 3 days"
    assert tool.call({"city": "Oslo", "units": "K"}, **CALL).error.startswith("bad arguments: 'K' is not one of")
    shout = load_tool(f"{tmp_path / 'mytools.py'}:SHOUT")
    assert shout.call({"text": "hi"}, **CALL).text == "HI"
    with pytest.raises(ValueError, match=r"no 'missing' in .*mytools.py \(tools and functions there: SHOUT, lookup\)"):
        load_tool("mytools.py:missing", tmp_path)
    with pytest.raises(ValueError, match="is a int, not a Tool or a function"):
        load_tool("mytools.py:NOT_A_TOOL", tmp_path)


def test_schema_from_signature_refuses_what_json_cannot_say():
    def star(*xs: int): ...
    def odd(x: set): ...
    with pytest.raises(ValueError, match=r"\*xs cannot be given by name"):
        tool_from_function(star)
    with pytest.raises(ValueError, match="parameter 'x' has type"):
        tool_from_function(odd)
    with pytest.raises(ValueError, match="invalid parameters schema"):
        Tool("t", "d", {"type": "nonsense"}, lambda: "")

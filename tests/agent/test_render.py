"""Observation tokens for plain and chat-template models: appended as their own tokens,
and for a chat model exactly what the template would have written after the turn."""
from __future__ import annotations

import pytest

from rlhf.agent.render import ObservationRenderer, plain_tools_header

# A ChatML template with tool messages (the shape of Qwen2.5's), for the tiny tokenizer.
CHATML = (
    "{% for m in messages %}"
    "{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><eos>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<eos>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tokenizer(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny["policy"])


def test_plain_observation_is_its_own_tokens(tokenizer):
    render = ObservationRenderer(tokenizer, chat=False)
    text = "<tool_response>5535</tool_response>"
    assert render.ids(text, None, ended_with_eos=False) == tokenizer.encode(text, add_special_tokens=False)
    assert render.ids("", None, ended_with_eos=True) == []


@pytest.mark.parametrize("ended_with_eos", [True, False])
def test_chat_observation_continues_the_template(tokenizer, ended_with_eos):
    """prompt + policy turn + observation tokens == the template's rendering of the whole
    conversation, token for token (the char-level tokenizer makes text and ids line up)."""
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = CHATML
    render = ObservationRenderer(tokenizer, chat=True)
    user = [{"role": "user", "content": "12*34="}]
    prompt = tokenizer.encode(tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True),
                              add_special_tokens=False)
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "12*34"}}</tool_call>'
    turn = tokenizer.encode(call, add_special_tokens=False) + ([tokenizer.eos_token_id] if ended_with_eos else [])
    obs = render.ids("", [{"role": "tool", "content": "408"}], ended_with_eos)
    whole = user + [{"role": "assistant", "content": call}, {"role": "tool", "content": "408"}]
    expected = tokenizer.apply_chat_template(whole, tokenize=False, add_generation_prompt=True)
    assert prompt + turn + obs == tokenizer.encode(expected, add_special_tokens=False)
    assert sum(1 for t in obs if t == tokenizer.eos_token_id) == (1 if ended_with_eos else 2)


def test_a_template_that_rewrites_history_is_refused(tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = "{% for m in messages|reverse %}{{ m.content }}<eos>{% endfor %}"
    with pytest.raises(ValueError, match="renders earlier turns differently"):
        ObservationRenderer(tokenizer, chat=True).ids("x", None, True)


def test_plain_tools_header_lists_each_schema():
    schema = {"type": "function", "function": {"name": "calculator", "description": "math",
                                               "parameters": {"type": "object"}}}
    header = plain_tools_header([schema])
    assert header.startswith("Tools (call one as <tool_call>") and '"name":"calculator"' in header

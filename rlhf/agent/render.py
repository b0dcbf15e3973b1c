"""Text the loop adds around the policy: tool descriptions in the prompt, observations.

Plain template (the tiny character-level tokenizer, no chat template): observations are
the environment's text as is (`<tool_response>...</tool_response>` for tools) and tool
descriptions a plain header before the prompt. Chat template: the tokenizer's own template
renders both, with `tools=` for the schemas and a "tool" (or "user") message for each
observation; the observation's tokens are the template's text *after* the assistant's
end-of-turn, so earlier turns are never re-rendered or re-tokenised.
"""
from __future__ import annotations

import json

from rlhf.agent.format import CALL_CLOSE, CALL_OPEN

# A fixed conversation the observation text is cut from (its content does not matter).
_PROBE = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]


def plain_tools_header(schemas: list[dict]) -> str:
    """The tool descriptions for a model without a chat template."""
    lines = [json.dumps(s["function"], separators=(",", ":")) for s in schemas]
    return ("Tools (call one as " + CALL_OPEN + '{"name": ..., "arguments": {...}}' + CALL_CLOSE + "):\n"
            + "\n".join(lines) + "\n")


class ObservationRenderer:
    """Token ids of an observation, for one tokenizer and prompt template."""

    def __init__(self, tokenizer, chat: bool):
        self.tokenizer, self.chat = tokenizer, chat
        self.eos_id = tokenizer.eos_token_id

    def ids(self, observation: str, messages: list[dict] | None, ended_with_eos: bool) -> list[int]:
        if not self.chat:
            return self.tokenizer.encode(observation, add_special_tokens=False) if observation else []
        messages = messages or [{"role": "user", "content": observation}]
        # the policy's turn stopped before its end-of-turn token (a stop string): close it for it
        close = [] if ended_with_eos else [self.eos_id]
        return close + self.tokenizer.encode(self._chat_text(messages), add_special_tokens=False)

    def _chat_text(self, messages: list[dict]) -> str:
        """What the chat template writes after an assistant turn's end-of-turn token, for
        `messages`, up to and including the next assistant header."""
        template = self.tokenizer.apply_chat_template
        before = template(_PROBE, tokenize=False)
        after = template(_PROBE + messages, tokenize=False, add_generation_prompt=True)
        eos = self.tokenizer.eos_token
        cut = before.rindex(eos) + len(eos) if eos and eos in before else len(before)
        if not after.startswith(before[:cut]):
            raise ValueError("the chat template renders earlier turns differently once an observation follows; "
                             "multi-turn token-in/token-out needs a template that appends")
        return after[cut:]

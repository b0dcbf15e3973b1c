"""Warm start of the tiny agent policy on teacher transcripts, and its measurement in a
multi-turn loop with the calculator (see rlhf/tiny/agent_task.py).

The loss is on the policy's tokens only: the tool call, the final answer and EOS; the
prompt and the observation are masked out, as they will be in RL.
"""
from __future__ import annotations

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from rlhf.agent.format import CALL_CLOSE
from rlhf.tiny import agent_task
from rlhf.tiny.warmstart import encode_segments, train_masked


def transcript_example(tokenizer, row: dict, rng, teacher: dict) -> tuple[list[int], list[int]]:
    segments = agent_task.teacher_transcript(row, agent_task.draw_mode(row, rng, teacher), rng)
    return encode_segments(tokenizer, [(row["prompt"], False), *segments])


def agent_warm_start(model, tokenizer, rows: list[dict], *, teacher: dict, steps: int, batch_size: int,
                     lr: float, seed: int, progress: bool = True) -> list[float]:
    def draw(rng):
        return [transcript_example(tokenizer, r, rng, teacher) for r in rng.sample(rows, batch_size)]

    return train_masked(model, draw, tokenizer.pad_token_id, steps=steps, lr=lr, seed=seed, progress=progress,
                        desc="[tiny] agent warm start")


class _StopAfter(StoppingCriteria):
    """Per-row stop once the sequence ends with `stop_ids` (the loop stops a turn at </tool_call>)."""

    def __init__(self, stop_ids: list[int]):
        self.stop = torch.tensor(stop_ids)

    def __call__(self, input_ids, scores, **kwargs):
        n = len(self.stop)
        if input_ids.shape[1] < n:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)
        return (input_ids[:, -n:] == self.stop).all(dim=1)


def _cut_turn(new_ids: list[int], stop_ids: list[int], eos_id: int, pad_id: int) -> tuple[list[int], bool]:
    """The turn's tokens up to its first stop (</tool_call> kept, EOS kept); whether it ended with EOS."""
    n = len(stop_ids)
    for i, tok in enumerate(new_ids):
        if tok == eos_id:
            return new_ids[: i + 1], True
        if new_ids[max(0, i + 1 - n): i + 1] == stop_ids:
            return new_ids[: i + 1], False
    return [t for t in new_ids if t != pad_id], False


@torch.no_grad()
def rollouts(model, tokenizer, prompts: list[str], *, samples: int = 1, seed: int | None = None,
             max_turns: int = 3, max_new_tokens: int = 100, chunk: int = 512) -> list[dict]:
    """Multi-turn trajectories (HF generate, token in / token out): each policy turn stops at
    EOS or </tool_call>; a turn that asks for a tool gets the observation appended as
    tokens and the policy goes on, up to `max_turns` policy turns. Greedy if seed is None,
    else `samples` trajectories per prompt at temperature 1. Returns, per trajectory
    (prompt-major), the response text, the final answer, tool calls and errors."""
    if seed is not None:
        torch.manual_seed(seed)
    stop_ids = tokenizer.encode(CALL_CLOSE, add_special_tokens=False)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    trajs = [{"prompt_ids": tokenizer.encode(p, add_special_tokens=False), "ids": [], "calls": 0, "errors": 0,
              "done": False} for p in prompts for _ in range(samples)]
    for _ in range(max_turns):
        active = [t for t in trajs if not t["done"]]
        for start in range(0, len(active), chunk):
            _generate_turn(model, active[start: start + chunk], seed is not None, max_new_tokens, stop_ids, eos, pad)
        for t in active:
            turn, ended = t.pop("turn")
            t["ids"] += turn
            observation = None if ended else agent_task.observe(tokenizer.decode(turn, skip_special_tokens=True))
            if observation is None:
                t["done"] = True
                continue
            t["calls"] += 1
            t["errors"] += agent_task.is_error(observation)
            t["ids"] += tokenizer.encode(observation, add_special_tokens=False)
    for t in trajs:
        t["response"] = tokenizer.decode(t["ids"], skip_special_tokens=True)
        t["answer"] = agent_task.final_answer(t["response"])
    return trajs


def _generate_turn(model, batch: list[dict], sample: bool, max_new_tokens: int, stop_ids, eos: int, pad: int):
    seqs = [t["prompt_ids"] + t["ids"] for t in batch]
    width = max(map(len, seqs))
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=sample,
                         temperature=1.0 if sample else None, top_k=0 if sample else None,
                         top_p=1.0 if sample else None, pad_token_id=pad, eos_token_id=eos,
                         stopping_criteria=StoppingCriteriaList([_StopAfter(stop_ids)]))
    for t, row in zip(batch, out[:, width:].tolist()):
        t["turn"] = _cut_turn(row, stop_ids, eos, pad)


def agent_rates(model, tokenizer, rows: list[dict], k: int = 8, seed: int = 0) -> dict:
    """Greedy exact accuracy; at temperature 1, k trajectories per prompt: the mean exact
    rate, pass@k, and the shares of trajectories with a tool call / a tool-call error."""
    prompts, labels = [r["prompt"] for r in rows], [r["label"] for r in rows]
    greedy = rollouts(model, tokenizer, prompts)
    sampled = rollouts(model, tokenizer, prompts, samples=k, seed=seed)
    right = [[sampled[i * k + j]["answer"] == labels[i] for j in range(k)] for i in range(len(rows))]
    share = lambda trajs, key: sum(t[key] > 0 for t in trajs) / len(trajs)  # noqa: E731
    return {"greedy_exact": sum(g["answer"] == y for g, y in zip(greedy, labels)) / len(rows),
            "greedy_tool_call_rate": share(greedy, "calls"),
            "greedy_format_error_rate": share(greedy, "errors"),
            "sampled_exact": sum(map(sum, right)) / (k * len(rows)),
            f"pass@{k}": sum(map(any, right)) / len(rows),
            "tool_call_rate": share(sampled, "calls"),
            "format_error_rate": share(sampled, "errors")}

"""Supervised warm start of the tiny policy from a noisy teacher (see rlhf/tiny/task.py).

A fixed number of steps with a cosine learning-rate decay, no early stop on accuracy:
the same steps on every CPU, so the build does not depend on where an accuracy
threshold happens to be crossed.
"""
from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from tqdm import tqdm

from rlhf.tiny.task import forgot_carry


def teacher_answer(row: dict, rng: random.Random, p_correct: float) -> str:
    """The noisy teacher: the right sum with probability p_correct, else the carry-less one."""
    return row["label"] if rng.random() < p_correct else forgot_carry(row["prompt"])


def encode_segments(tokenizer, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """(token ids of the segments + EOS, per-token loss mask): 1 on the tokens of segments
    marked True (the policy's) and on the EOS, 0 elsewhere (prompt, observations)."""
    ids, mask = [], []
    for text, trained in segments:
        piece = tokenizer.encode(text, add_special_tokens=False)
        ids += piece
        mask += [int(trained)] * len(piece)
    return ids + [tokenizer.eos_token_id], mask + [1]


def encode(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """prompt + answer + EOS, the loss on the answer and EOS."""
    return encode_segments(tokenizer, [(prompt, False), (answer, True)])


def collate(examples, pad_id: int):
    """Right-padded ids and labels, the labels -100 where the mask is 0 and on padding."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), -100)
    for i, (seq, mask) in enumerate(examples):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, : len(seq)] = torch.where(torch.tensor(mask, dtype=torch.bool), torch.tensor(seq), -100)
    return ids, labels, (ids != pad_id).long()


def supervised_warm_start(model, tokenizer, rows: list[dict], *, steps: int, p_correct: float,
                          batch_size: int = 64, lr: float = 2e-3, warmup: int = 20, seed: int = 0,
                          progress: bool = True) -> list[float]:
    """Train `model` in place for `steps` AdamW steps on teacher answers; returns the losses."""
    def draw(rng):
        return [encode(tokenizer, r["prompt"], teacher_answer(r, rng, p_correct)) for r in rng.sample(rows, batch_size)]

    return train_masked(model, draw, tokenizer.pad_token_id, steps=steps, lr=lr, warmup=warmup, seed=seed,
                        progress=progress)


def train_masked(model, draw_batch, pad_id: int, *, steps: int, lr: float, warmup: int = 20, seed: int = 0,
                 progress: bool = True, desc: str = "[tiny] warm start") -> list[float]:
    """`steps` AdamW steps on batches `draw_batch(rng)` of (ids, loss mask) examples; returns
    the losses. Learning rate: linear warm-up, then cosine decay to 10% (a stable end point)."""
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    shape = lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * s / steps)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress, mininterval=2.0)
    for _ in bar:
        ids, labels, mask = collate(draw_batch(rng), pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return losses


@torch.no_grad()
def answers(model, tokenizer, prompts: list[str], *, samples: int = 1, seed: int = 0,
            max_new_tokens: int = 5) -> list[str]:
    """Greedy answers (samples=1 with seed None) or `samples` answers per prompt at temperature 1."""
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    sample = seed is not None
    if sample:
        torch.manual_seed(seed)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=sample, num_return_sequences=samples,
                         temperature=1.0 if sample else None, top_k=0 if sample else None, top_p=1.0 if sample else None,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return [t.strip() for t in tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)]


def pass_rates(model, tokenizer, rows: list[dict], k: int = 8, seed: int = 0) -> dict:
    """Greedy exact answers (pass@1 as evaluated by RL runs), and, sampling k answers per
    prompt at temperature 1, the mean exact rate and pass@k (any of the k right)."""
    prompts, labels = [r["prompt"] for r in rows], [r["label"] for r in rows]
    greedy = answers(model, tokenizer, prompts, seed=None)
    sampled = answers(model, tokenizer, prompts, samples=k, seed=seed)
    right = [[sampled[i * k + j] == labels[i] for j in range(k)] for i in range(len(rows))]
    return {"greedy_pass@1": sum(g == y for g, y in zip(greedy, labels)) / len(rows),
            "sampled_pass@1": sum(map(sum, right)) / (k * len(rows)),
            f"pass@{k}": sum(map(any, right)) / len(rows),
            "greedy_forgot_carry": sum(g == forgot_carry(r["prompt"]) for g, r in zip(greedy, rows)) / len(rows)}

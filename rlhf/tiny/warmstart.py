"""Short supervised warm start of the tiny policy on the arithmetic task.

Stopped early on purpose: the warm-started model gets some sums right and many
nearly right, which leaves RL a measurable gain to make (see README).
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F


def encode_examples(tokenizer, rows: list[dict]) -> list[tuple[list[int], int]]:
    """(prompt + answer + EOS token ids, prompt length) per row."""
    out = []
    for row in rows:
        prompt = tokenizer.encode(row["prompt"], add_special_tokens=False)
        answer = tokenizer.encode(row["label"], add_special_tokens=False)
        out.append((prompt + answer + [tokenizer.eos_token_id], len(prompt)))
    return out


def collate(examples, pad_id: int):
    """Right-padded ids and labels with the loss on answer tokens only."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), -100)
    for i, (seq, prompt_len) in enumerate(examples):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, prompt_len: len(seq)] = torch.tensor(seq[prompt_len:])
    return ids, labels, (ids != pad_id).long()


def supervised_warm_start(model, tokenizer, rows: list[dict], *, max_steps: int, batch_size: int = 64,
                          lr: float = 2e-3, seed: int = 0, stop_at_accuracy: float | None = None,
                          probe_rows: list[dict] | None = None, probe_every: int = 25, log=None):
    """Train `model` in place until greedy accuracy on `probe_rows` reaches
    `stop_at_accuracy` (checked every `probe_every` steps) or `max_steps`.
    Returns (loss curve, last probed accuracy)."""
    rng = random.Random(seed)
    examples = encode_examples(tokenizer, rows)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    model.train()
    losses, acc = [], 0.0
    for step in range(1, max_steps + 1):
        ids, labels, mask = collate(rng.sample(examples, batch_size), tokenizer.pad_token_id)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if stop_at_accuracy is not None and step % probe_every == 0:
            model.eval()
            acc = greedy_accuracy(model, tokenizer, probe_rows)
            model.train()
            if log:
                log(step, loss.item(), acc)
            if acc >= stop_at_accuracy:
                break
    model.eval()
    return losses, acc


@torch.no_grad()
def greedy_accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int = 6) -> float:
    """Fraction of rows whose greedy answer is exactly right (HF generate)."""
    tokenizer.padding_side = "left"
    batch = tokenizer([r["prompt"] for r in rows], return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return sum(t.strip() == r["label"] for t, r in zip(texts, rows)) / len(rows)

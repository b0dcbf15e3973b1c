"""Data of the supervised stages: prompt/response rows (SFT) and preference pairs (RM).

Preference formats:
  "hh"     Anthropic HH-RLHF: `chosen` and `rejected` are full dialogues
           ("\\n\\nHuman: ...\\n\\nAssistant: ...") sharing everything up to the last
           "\\n\\nAssistant:"; that prefix is the prompt, the rest the two responses.
  "pairs"  explicit `prompt`, `chosen`, `rejected` columns (names configurable).
  "auto"   "pairs" if the prompt column exists, else "hh".
Files: .jsonl / .jsonl.gz / .json / .parquet, or a saved-dataset folder. Relative
paths resolve against the current directory.

Rows over the token budget are dropped and counted, never silently truncated. The
one truncation is explicit: `max_prompt_tokens` keeps the LAST N prompt tokens (the
turns nearest the response), for char-level models with short contexts.
Responses end with EOS, exactly as PPO's sampled responses do, so the reward model
is trained on the inputs it will score.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf.batch import Batch
from rlhf.data import DataError, load_rows, read_jsonl

HH_SPLIT = "\n\nAssistant:"


# ==================================================================== reading rows
def read_rows(path: str) -> list[dict]:
    """Rows of a JSONL file (gzipped or not) or anything `rlhf.data.load_rows` reads."""
    from rlhf.tiny import resolve

    try:
        resolved = Path(resolve(path))
    except KeyError as err:  # unknown tiny artifact
        raise DataError(err.args[0]) from None
    if not resolved.exists():
        raise DataError(f"dataset not found: {path} (resolved to {resolved.resolve()})")
    if resolved.name.endswith((".jsonl", ".jsonl.gz")):
        rows = read_jsonl(resolved, path)
        if not rows:
            raise DataError(f"dataset {path} has no rows")
        return rows
    return [dict(row) for row in load_rows(str(resolved))]


def _text(row: dict, key: str, source: str, index: int) -> str:
    value = row.get(key) if isinstance(row, dict) else None
    if not isinstance(value, str) or not value.strip():
        columns = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise DataError(f"{source} row {index}: missing, empty or non-text {key!r} (columns: {columns})")
    return value


class PromptMismatch(DataError):
    """An HH row whose two dialogues differ before the last assistant turn."""


def split_hh(chosen: str, rejected: str, source: str = "?", index: int = 0) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of one HH-RLHF row.

    The prompt runs up to and including the last "\\n\\nAssistant:" of `chosen`;
    `rejected` must start with the same prompt.
    """
    cut = chosen.rfind(HH_SPLIT)
    if cut < 0:
        raise DataError(f"{source} row {index}: no {HH_SPLIT!r} in 'chosen'; not an HH-RLHF dialogue")
    prompt = chosen[: cut + len(HH_SPLIT)]
    if not rejected.startswith(prompt) or HH_SPLIT in rejected[len(prompt):]:
        raise PromptMismatch(f"{source} row {index}: 'chosen' and 'rejected' do not share the prompt "
                             f"up to the last {HH_SPLIT!r}")
    return prompt, chosen[len(prompt):], rejected[len(prompt):]


# ==================================================================== token sets
@dataclass
class PairSet:
    """Tokenized data of one split. `rejected` is empty for SFT rows."""
    prompts: list[list[int]] = field(default_factory=list)
    chosen: list[list[int]] = field(default_factory=list)    # responses (SFT) / chosen responses (RM), EOS-terminated
    rejected: list[list[int]] = field(default_factory=list)  # rejected responses, EOS-terminated
    dropped_too_long: int = 0          # rows over max_tokens
    dropped_mismatch: int = 0          # HH rows whose dialogues do not share the prompt
    prompts_truncated: int = 0         # prompts cut from the left to max_prompt_tokens

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, indices) -> "PairSet":
        pick = lambda xs: [xs[i] for i in indices] if xs else []  # noqa: E731
        return PairSet(pick(self.prompts), pick(self.chosen), pick(self.rejected))

    def summary(self) -> str:
        return (f"{len(self)} kept, {self.dropped_too_long} dropped over the length budget, "
                f"{self.dropped_mismatch} dropped (prompts differ), {self.prompts_truncated} prompts left-truncated")


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def load_sft(path: str, data_cfg, tokenizer) -> PairSet:
    """prompt/response rows -> token ids; rows over data.max_tokens are dropped and counted."""
    out = PairSet()
    for i, row in enumerate(read_rows(path)):
        prompt = _encode(tokenizer, _text(row, data_cfg.prompt_key, path, i))
        response = _encode(tokenizer, _text(row, data_cfg.response_key, path, i)) + [tokenizer.eos_token_id]
        if len(prompt) + len(response) > data_cfg.max_tokens:
            out.dropped_too_long += 1
            continue
        out.prompts.append(prompt)
        out.chosen.append(response)
    return _non_empty(out, path, "data.max_tokens", data_cfg.max_tokens)


def load_preferences(path: str, data_cfg, tokenizer) -> PairSet:
    """Preference pairs -> token ids (see the module doc for formats and budgets)."""
    rows = read_rows(path)
    fmt = data_cfg.format
    if fmt == "auto":
        fmt = "pairs" if rows and isinstance(rows[0], dict) and data_cfg.prompt_key in rows[0] else "hh"
    out = PairSet()
    for i, row in enumerate(rows):
        chosen = _text(row, data_cfg.chosen_key, path, i)
        rejected = _text(row, data_cfg.rejected_key, path, i)
        if fmt == "hh":
            try:
                prompt_text, chosen, rejected = split_hh(chosen, rejected, path, i)
            except PromptMismatch:
                out.dropped_mismatch += 1
                continue
        else:
            prompt_text = _text(row, data_cfg.prompt_key, path, i)
        prompt = _encode(tokenizer, prompt_text)
        if data_cfg.max_prompt_tokens is not None and len(prompt) > data_cfg.max_prompt_tokens:
            prompt = prompt[-data_cfg.max_prompt_tokens:]  # explicit, counted left truncation
            out.prompts_truncated += 1
        good = _encode(tokenizer, chosen) + [tokenizer.eos_token_id]
        bad = _encode(tokenizer, rejected) + [tokenizer.eos_token_id]
        if len(prompt) + max(len(good), len(bad)) > data_cfg.max_tokens:
            out.dropped_too_long += 1
            continue
        out.prompts.append(prompt)
        out.chosen.append(good)
        out.rejected.append(bad)
    return _non_empty(out, path, "data.max_tokens", data_cfg.max_tokens)


def _non_empty(out: PairSet, path: str, key: str, budget: int) -> PairSet:
    if not out.prompts:
        raise DataError(f"dataset {path}: no usable rows ({out.summary()}; {key}={budget})")
    return out


def train_eval_split(train: PairSet, eval_path: str | None, eval_size: int, load) -> tuple[PairSet, PairSet]:
    """(train, held-out): `load(eval_path)` if given, else the last eval_size rows of train."""
    if eval_path:
        held = load(eval_path)
        return train, held.select(range(min(eval_size, len(held))))
    if len(train) <= eval_size:
        raise DataError(f"{len(train)} usable rows cannot hold out data.eval_size={eval_size}")
    n = len(train)
    return train.select(range(n - eval_size)), train.select(range(n - eval_size, n))


# ==================================================================== batches
def make_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> Batch:
    """Prompt left-padded, response right-padded (rlhf/batch.py layout); response_mask
    is 1 on the response tokens including EOS. Shape: (B, P+R)."""
    size, P, R = len(prompts), max(map(len, prompts)), max(map(len, responses))
    ids = torch.full((size, P + R), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    mask = torch.zeros(size, R)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, P - len(p): P] = torch.tensor(p, dtype=torch.long)
        ids[i, P: P + len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, P - len(p): P + len(r)] = 1
        mask[i, : len(r)] = 1
    return Batch(input_ids=ids, attention_mask=attn, response_mask=mask, group_ids=torch.arange(size))


def sft_batch(data: PairSet, indices: list[int], pad_id: int) -> Batch:
    return make_batch([data.prompts[i] for i in indices], [data.chosen[i] for i in indices], pad_id)


def pair_batch(data: PairSet, indices: list[int], pad_id: int) -> Batch:
    """Rows 2k / 2k+1 = chosen / rejected of pair k, so any even-sized contiguous chunk
    (rank, micro-batch) holds whole pairs. group_ids = pair index."""
    prompts, responses = [], []
    for i in indices:
        prompts += [data.prompts[i], data.prompts[i]]
        responses += [data.chosen[i], data.rejected[i]]
    batch = make_batch(prompts, responses, pad_id)
    return batch.replace(group_ids=torch.arange(len(indices)).repeat_interleave(2))

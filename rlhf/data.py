"""Prompt datasets: load, template, tokenize, filter by length, sample resumably.

Sources: a JSONL / JSON / Parquet file, a folder written by `Dataset.save_to_disk`,
or a "tiny:<name>" artifact of the tiny-model kit. Prompts longer than the budget
are dropped and counted (the count is logged), never silently truncated.
"""
from __future__ import annotations

import gzip
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file and row/column."""


@dataclass
class PromptSet:
    prompt_ids: list[list[int]]        # token ids per kept row
    prompts: list[str]                 # rendered prompt text per kept row
    labels: list[Any]                  # ground truth per kept row (None if no label column)
    columns: dict[str, list]           # every other dataset column, per kept row
    dropped_too_long: int              # rows over data.max_prompt_tokens
    source: str

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def rows(self, indices: list[int]) -> "PromptSet":
        pick = lambda xs: [xs[i] for i in indices]  # noqa: E731
        return PromptSet(pick(self.prompt_ids), pick(self.prompts), pick(self.labels),
                         {k: pick(v) for k, v in self.columns.items()}, 0, self.source)


def load_rows(path: str):
    """A `datasets.Dataset` from a local file or saved-dataset folder."""
    import datasets

    from rlhf.tiny import resolve

    try:
        resolved = Path(resolve(path))
    except KeyError as err:  # unknown tiny artifact
        raise DataError(err.args[0]) from None
    if not resolved.exists():
        raise DataError(f"dataset not found: {path}" + (f" (resolved to {resolved})" if str(resolved) != path else ""))
    if resolved.is_file() and not resolved.read_bytes().strip():
        raise DataError(f"dataset {path} is empty")
    if resolved.suffix == ".jsonl":
        read_jsonl(resolved, path)  # names the first bad line; datasets would not
    try:
        with _quiet_datasets():
            if resolved.is_dir():
                return datasets.load_from_disk(str(resolved))
            kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(resolved.suffix)
            if kind is None:
                raise DataError(f"dataset {resolved}: unsupported file type {resolved.suffix!r} (use .jsonl, .json, .parquet, .csv)")
            return datasets.load_dataset(kind, data_files=str(resolved), split="train")
    except DataError:
        raise
    except Exception as err:
        text = " ".join(str(err).split())[:300]
        if "corresponds to no data" in text:  # datasets' words for a file with no rows (`[]`, a bare CSV header)
            raise DataError(f"dataset {path} has no rows") from None
        raise DataError(f"cannot read dataset {resolved}: {type(err).__name__}: {text}") from None


def read_jsonl(resolved: Path, path: str) -> list[dict]:
    """Rows of a JSONL file, gzipped or not; a bad line is a DataError naming it."""
    opener = gzip.open if resolved.suffix == ".gz" else open
    rows = []
    try:
        with opener(resolved, "rt", encoding="utf-8") as handle:
            for i, line in enumerate(handle):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path} line {i + 1}: not JSON ({err.msg})") from None
                if not isinstance(rows[-1], dict):
                    raise DataError(f"{path} line {i + 1}: not a JSON object ({type(rows[-1]).__name__})")
    except (OSError, EOFError, UnicodeDecodeError) as err:  # not gzip, truncated, not UTF-8
        raise DataError(f"cannot read dataset {path}: {type(err).__name__}: {err}") from None
    return rows


@contextmanager
def _quiet_datasets():
    """No progress bars or error logs from `datasets` while loading: a bad file is
    reported once, on one line, by the DataError."""
    import datasets

    bars_were_on, level = not datasets.are_progress_bars_disabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if bars_were_on:
            datasets.enable_progress_bars()


def render_prompt(row: dict, data_cfg, tokenizer, row_index: int, source: str, tools: list[dict] | None = None) -> str:
    """The prompt text of a row; `tools` (JSON schemas): described to the policy, by the
    chat template's `tools=` or a plain header (rlhf.agent.render)."""
    value = row.get(data_cfg.prompt_key)
    if value is None:
        raise DataError(f"{source} row {row_index}: no prompt key {data_cfg.prompt_key!r} "
                        f"(columns: {sorted(row)}); set data.prompt_key")
    if data_cfg.template == "chat":
        messages = value if isinstance(value, list) else [{"role": "user", "content": str(value)}]
        return tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False, add_generation_prompt=True)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{source} row {row_index}: empty or non-text prompt in column {data_cfg.prompt_key!r}")
    header = ""
    if tools:
        from rlhf.agent.render import plain_tools_header

        header = plain_tools_header(tools)
    return header + data_cfg.prompt_template.replace("{prompt}", value)


def load_prompts(path: str, data_cfg, tokenizer, limit: int | None = None, tools: list[dict] | None = None) -> PromptSet:
    """Load, render and tokenize prompts (`tools`: see render_prompt); drop (and count) the
    ones over budget."""
    if data_cfg.template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise DataError(f"config key 'data.template' is 'chat' but the policy's tokenizer has no chat template; "
                        f"use data.template=plain")
    table = load_rows(path)
    if limit is not None:
        table = table.select(range(min(limit, len(table))))
    if len(table) == 0:
        raise DataError(f"dataset {path} has no rows")
    label_key = data_cfg.label_key
    if label_key is not None and label_key not in table.column_names:
        raise DataError(f"dataset {path} has no label column {label_key!r} (columns: {table.column_names}); "
                        f"set data.label_key (null: rows without labels)")
    other = [c for c in table.column_names if c not in (data_cfg.prompt_key, data_cfg.label_key)]
    out = PromptSet([], [], [], {c: [] for c in other}, 0, path)
    for i, row in enumerate(table):
        text = render_prompt(row, data_cfg, tokenizer, i, path, tools)
        ids = tokenizer.encode(text, add_special_tokens=data_cfg.template != "chat")
        if len(ids) > data_cfg.max_prompt_tokens:
            out.dropped_too_long += 1
            continue
        out.prompt_ids.append(ids)
        out.prompts.append(text)
        if label_key is not None and row[label_key] is None:
            raise DataError(f"{path} row {i}: no label in column {label_key!r}")
        out.labels.append(row[label_key] if label_key is not None else None)
        for c in other:
            out.columns[c].append(row[c])
    if not out.prompt_ids:
        raise DataError(f"dataset {path}: all {out.dropped_too_long} prompts exceed data.max_prompt_tokens="
                        f"{data_cfg.max_prompt_tokens}")
    return out


class PromptSampler:
    """Epoch-wise seeded shuffling with a position that checkpoints and resumes exactly."""

    def __init__(self, size: int, batch_size: int, seed: int, shuffle: bool = True,
                 key: str = "train.prompts_per_step", rows: str = "prompts"):
        """`key` and `rows` name the batch size's config key and what a row is, for errors."""
        if batch_size > size:
            raise DataError(f"{key}={batch_size} exceeds the {size} usable {rows}")
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.epoch, self.cursor = 0, 0

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        gen = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return torch.randperm(self.size, generator=gen).tolist()

    def next_indices(self) -> list[int]:
        if self.cursor + self.batch_size > self.size:  # drop the ragged tail, start a new epoch
            self.epoch, self.cursor = self.epoch + 1, 0
        order = self._order()
        picked = order[self.cursor: self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return picked

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "size": self.size}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where the checkpoint stopped. Another dataset size or seed
        would resume in an order the checkpoint never saw: refused."""
        what = {"size": "usable prompts (data.train_path, data.max_prompt_tokens)", "seed": "run.seed"}
        for key, label in what.items():
            if state[key] != getattr(self, key):
                raise DataError(f"cannot resume: the checkpoint's sampler had {label} = {state[key]}, "
                                f"this run has {getattr(self, key)}")
        self.epoch, self.cursor = state["epoch"], state["cursor"]

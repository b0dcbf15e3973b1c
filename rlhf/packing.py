"""Padding-free packing: the real tokens of a batch's rows in one row, no pad tokens.

The rows of a `rlhf.batch.Batch` (prompt left-padded, response right-padded) become
one (1, N) row, N = the number of real tokens, with position ids restarting at 0 for
each sequence. Given position ids and no attention mask, transformers confines
attention to each sequence itself: `masking_utils.find_packed_sequence_indices`
starts a new sequence wherever a position id is not its predecessor + 1 and masks
across sequences (sdpa / eager / flex), and flash-attention takes the same
boundaries as varlen `cu_seqlens`. The positions are the padded path's (real tokens
counted from 0, `Batch.position_ids`), so log-probs and values agree with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Packed:
    input_ids: Tensor     # (1, N) the real tokens of every row, row after row
    position_ids: Tensor  # (1, N) 0..len-1 per row
    column: Tensor        # (B, T) packed index of each real column of the padded batch, -1 at pads
    lengths: Tensor       # (B,) real tokens per row

    def model_inputs(self, device: torch.device) -> dict:
        """Forward kwargs: no attention mask, so transformers detects the packing."""
        return dict(input_ids=self.input_ids.to(device), position_ids=self.position_ids.to(device),
                    attention_mask=None, use_cache=False)

    def response_sources(self, prompt_len: int) -> tuple[Tensor, Tensor]:
        """(src (K,), valid (B, R) bool): valid marks the real response tokens and src
        the packed index of the logit predicting each (the token before it), row-major.
        A response token's predecessor is in its own sequence (the last prompt token
        for the first response token): rows need a non-empty prompt."""
        response_cols = self.column[:, prompt_len:]
        valid = response_cols >= 0
        has_prompt = self.column[:, :prompt_len].ge(0).any(-1) | ~valid.any(-1)
        if not bool(has_prompt.all()):
            raise ValueError(f"packing needs a prompt token before every response; rows "
                             f"{(~has_prompt).nonzero().flatten().tolist()} have none")
        return response_cols[valid] - 1, valid

    def last_token_index(self) -> Tensor:
        """(B,) packed index of each row's last real token (rows need one)."""
        if bool((self.lengths == 0).any()):
            raise ValueError(f"rows {(self.lengths == 0).nonzero().flatten().tolist()} have no real token")
        return self.lengths.cumsum(0) - 1


def packing_mode(setting: str | bool) -> bool | str:
    """train.packing ("auto" | "always" | "never") as the forwards' `packed` argument."""
    modes = {"always": True, "never": False, "auto": "auto", True: True, False: False}
    if setting not in modes:
        raise ValueError(f"train.packing must be auto, always or never, got {setting!r}")
    return modes[setting]


def packing_pays(attention_mask: Tensor, hidden_size: int, attn_implementation: str | None = None) -> bool:
    """Whether packing these rows does no more work than padding them.

    A token costs a transformer layer ~12 h^2 multiply-adds in its projections and MLP
    and ~2 h per token it attends to. Padded, k rows of width W attend within their row:
    k W (12 h^2 + 2 h W). Packed, the T real tokens are fewer, but sdpa / eager on CPU
    compute the packed row's whole T x T attention (the mask only zeroes the
    cross-sequence part): T (12 h^2 + 2 h T). Pack when T (6h + T) <= k W (6h + W).
    Flash-attention varlen attends within each sequence only: packing always pays there.
    """
    if attn_implementation and attn_implementation.startswith("flash"):
        return True
    rows, width = attention_mask.shape
    tokens = int(attention_mask.sum())
    return tokens * (6 * hidden_size + tokens) <= rows * width * (6 * hidden_size + width)


def pack(input_ids: Tensor, attention_mask: Tensor) -> Packed:
    """Pack the real tokens (attention_mask 1, contiguous in each row) into one row.
    Shape: (B, T), (B, T) -> Packed with N = attention_mask.sum()."""
    real = attention_mask.bool()
    lengths = real.sum(-1)
    positions = real.long().cumsum(-1) - 1
    first = real.long().argmax(-1)
    last = real.shape[1] - 1 - real.flip(-1).long().argmax(-1)
    contiguous = (lengths == 0) | (last - first + 1 == lengths)
    if not bool(contiguous.all()):
        bad = (~contiguous).nonzero().flatten().tolist()
        raise ValueError(f"rows {bad} have pad tokens between real ones: cannot pack")
    offsets = lengths.cumsum(0) - lengths
    column = torch.where(real, offsets[:, None] + positions, torch.full_like(positions, -1))
    return Packed(input_ids=input_ids[real][None], position_ids=positions[real][None],
                  column=column, lengths=lengths)

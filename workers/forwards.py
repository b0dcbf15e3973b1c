"""The roles' models and their forward passes in the rlhf.batch layout.

Loading: causal LMs and one-output per-token heads (critic, reward model) from HF
folders, dropout off. Forwards: response log-probs (temperature, top-k/top-p renormalised
as the rollout sampled), values and last-token scores, padded or packed (rlhf.packing),
and the micro-batch plans (rows, or token budgets balanced by rlhf.partition).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from rlhf.algorithms import entropy_from_logits, last_token_index, logprobs_from_logits
from rlhf.batch import Batch
from rlhf.packing import pack, packing_pays
from rlhf.partition import budget_partition


# ==================================================================== models
def _no_dropout(config) -> None:
    """RL needs the forward of the update to match the one that scored the tokens: a
    dropout mask would make the first PPO ratio != 1, so every dropout is turned off."""
    for key, value in list(vars(config).items()):
        if "dropout" in key and isinstance(value, float):
            setattr(config, key, 0.0)


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32):
    """Safetensors only (here and in load_value_model): pickled .bin weights are refused."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    _no_dropout(config)
    return AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype, use_safetensors=True)


def _checkpoint_keys(path: str) -> set[str]:
    """Tensor names stored in a local safetensors checkpoint (empty if unknown)."""
    import json

    from safetensors import safe_open

    folder = Path(path)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return set(json.loads(index.read_text())["weight_map"])
    single = folder / "model.safetensors"
    if single.exists():
        with safe_open(str(single), framework="pt") as f:
            return set(f.keys())
    return set()


def load_value_model(path: str, seed: int, dtype: torch.dtype = torch.float32):
    """A one-output per-token head (`AutoModelForTokenClassification`, num_labels=1) on a
    transformer backbone, from a sequence-classification checkpoint (reward model: its
    `score` head is reused as is, same name and shape) or from a causal LM (the backbone
    loads, the lm_head is dropped and a new head is initialised under `seed`).

    The head has a bias only if the checkpoint's has one, so a reward model's head loads
    without new parameters; classifier dropout is off (see `_no_dropout`).
    """
    from transformers import AutoConfig, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(path, num_labels=1)
    config.token_classification_bias = "score.bias" in _checkpoint_keys(path)
    config.classifier_dropout = 0.0
    _no_dropout(config)
    torch.manual_seed(seed)  # init of any weight missing from the checkpoint (new head)
    return AutoModelForTokenClassification.from_pretrained(path, config=config, dtype=dtype,
                                                           use_safetensors=True)


# ==================================================================== forwards
def micro_batches(batch: Batch, size: int) -> list[Batch]:
    return [batch.index(slice(i, i + size)) for i in range(0, batch.size, size)]


def row_costs(batch: Batch, packed: bool) -> list[int]:
    """What each row costs a forward: its real tokens packed, the full width padded."""
    if packed:  # True or "auto"
        return batch.attention_mask.sum(-1).tolist()
    return [batch.input_ids.shape[1]] * batch.size


def plan_micro_batches(batch: Batch, *, rows: int, max_tokens: int, packed: bool,
                       parts: int | None = None) -> list[Tensor]:
    """Row indices of each micro-batch of `batch`: contiguous runs of `rows` sequences,
    or with `max_tokens` > 0 balanced bins of at most that many tokens (row_costs), in
    `parts` bins if given (e.g. the most any rank needs, so ranks run in lockstep)."""
    if max_tokens <= 0:
        return [torch.arange(i, min(i + rows, batch.size)) for i in range(0, batch.size, rows)]
    bins = budget_partition(row_costs(batch, packed), max_tokens, parts)
    return [torch.tensor(b, dtype=torch.long) for b in bins]


def _model_inputs(batch: Batch, device: torch.device) -> dict:
    return dict(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                position_ids=batch.position_ids().to(device), use_cache=False)


def _packs(model, batch: Batch, packed: bool | str) -> bool:
    """packed: True / False, or "auto": pack when it does no more work (rlhf.packing.packing_pays)."""
    if packed != "auto":
        return bool(packed)
    config = getattr(model, "module", model).config  # a DeepSpeed engine wraps the HF model
    return packing_pays(batch.attention_mask, config.hidden_size, config._attn_implementation)


def _scatter_rows(values: Tensor, valid: Tensor) -> Tensor:
    """(K,) values of the valid (B, R) cells -> (B, R), 0 elsewhere (differentiable)."""
    out = values.new_zeros(valid.shape)
    return out.masked_scatter(valid.to(out.device), values)


def response_logprobs(model, batch: Batch, temperature: float, *, device: torch.device, top_k: int = -1,
                      top_p: float = 1.0, entropy: bool = False, entropy_grad: bool = False,
                      packed: bool = False) -> tuple[Tensor, Tensor | None]:
    """Log-probs (and entropies) of the response tokens under `model` at `temperature`,
    renormalised over the tokens top_k / top_p keep (as the rollout engine sampled).

    Response token j sits at column P+j and is predicted by the logits at column
    P+j-1 (rlhf/batch.py); only those columns go through the LM head (padded: the
    last R+1; packed: exactly one per real response token, rlhf.packing). Packed,
    the cells of pad tokens are 0. Shape: batch (B, P+R) -> (B, R) float32, (B, R) float32 | None.
    """
    if _packs(model, batch, packed):
        return _packed_response_logprobs(model, batch, temperature, device=device, top_k=top_k, top_p=top_p,
                                         entropy=entropy, entropy_grad=entropy_grad)
    R = batch.response_len
    logits = model(**_model_inputs(batch, device), logits_to_keep=R + 1).logits[:, :-1]
    logprobs = logprobs_from_logits(logits, batch.responses.to(device), temperature, top_k, top_p)
    ent = None
    if entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = entropy_from_logits(logits, temperature, top_k, top_p)
    return logprobs, ent


def _packed_response_logprobs(model, batch: Batch, temperature: float, *, device: torch.device, top_k: int,
                              top_p: float, entropy: bool, entropy_grad: bool) -> tuple[Tensor, Tensor | None]:
    packed = pack(batch.input_ids, batch.attention_mask)
    src, valid = packed.response_sources(batch.prompt_len)
    logits = model(**packed.model_inputs(device), logits_to_keep=src.to(device)).logits  # (1, K, V)
    labels = batch.responses[valid].to(device)[None]
    logprobs = _scatter_rows(logprobs_from_logits(logits, labels, temperature, top_k, top_p)[0], valid)
    ent = None
    if entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = _scatter_rows(entropy_from_logits(logits, temperature, top_k, top_p)[0], valid)
    return logprobs, ent


def response_values(model, batch: Batch, *, device: torch.device, packed: bool = False) -> Tensor:
    """Values of the response tokens from a one-output per-token head.

    The value of response token j is read at column P+j-1: the state *before* the
    token is emitted, aligned with its log-prob (and with GAE, whose V(s_t) is the
    value of the state in which action t is taken). Packed, the cells of pad tokens
    are 0. Shape: (B, P+R) -> (B, R) float32.
    """
    P = batch.prompt_len
    if not _packs(model, batch, packed):
        return model(**_model_inputs(batch, device)).logits[:, P - 1:-1, 0].float()
    rows = pack(batch.input_ids, batch.attention_mask)
    src, valid = rows.response_sources(P)
    values = model(**rows.model_inputs(device)).logits[0, :, 0]
    return _scatter_rows(values[src.to(device)].float(), valid)


def last_token_scores(model, batch: Batch, *, device: torch.device, packed: bool = False) -> Tensor:
    """A one-output per-token head read at each row's last real token. Shape: (B, T) -> (B,) float32."""
    if _packs(model, batch, packed):
        rows = pack(batch.input_ids, batch.attention_mask)
        return model(**rows.model_inputs(device)).logits[0, rows.last_token_index().to(device), 0].float()
    logits = model(**_model_inputs(batch, device)).logits
    last = last_token_index(batch.attention_mask.to(device))
    return logits[torch.arange(batch.size, device=device), last, 0].float()

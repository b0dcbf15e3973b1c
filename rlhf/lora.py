"""LoRA adapters (peft) on the trainers' models, and what the weight sync and export need.

`check_lora` runs at start-up, before any worker, on the model built on the meta device
(no weights read): it refuses a target module the model does not have (listing those it
has) or a model peft cannot wrap, naming the config key. `add_adapters` wraps a loaded
model; `adapter_tensors` / `merged_tensors` turn the wrapped model's parameters into
what the rollout engines load (the adapter in peft's file layout, or HF-named merged
weights).

Imports neither ray nor vllm.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from rlhf.config.checks import ConfigError
from rlhf.config.schema import LoRASection

ADAPTER = "default"                    # peft's name for the one adapter
PEFT_PREFIX = "base_model.model."      # what peft puts before the wrapped model's names
VALUE_HEADS = ("score", "classifier")  # the heads peft keeps fully trainable in TOKEN_CLS models
# the ranks vLLM 0.32 accepts as max_lora_rank (vllm.config.lora.MaxLoRARanks)
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def peft_config(lora: LoRASection, task_type: str):
    from peft import LoraConfig

    targets = lora.target_modules
    # a value model's head is trained whole (peft's modules_to_save for TOKEN_CLS), never adapted
    head = {"exclude_modules": list(VALUE_HEADS)} if task_type == "TOKEN_CLS" else {}
    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                      task_type=task_type, target_modules="all-linear" if targets == ["all-linear"] else list(targets),
                      **head)


def adaptable_module_names(model: torch.nn.Module) -> list[str]:
    """Last name components of the layers peft can put an adapter on (linear, embedding, conv)."""
    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name and isinstance(module, kinds)}
    try:
        from transformers.pytorch_utils import Conv1D  # GPT-2 style layers

        names |= {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, Conv1D)}
    except ImportError:
        pass
    return sorted(names)


def add_adapters(model: torch.nn.Module, lora: LoRASection, task_type: str = "CAUSAL_LM", key: str = "lora"):
    """`model` wrapped by peft with fresh adapters (B = 0: the wrapped model computes
    exactly the base model's function); only adapter parameters require grad. A bad
    target or a model peft cannot wrap: ConfigError naming `key`."""
    from peft import get_peft_model

    has = adaptable_module_names(model)
    missing = [t for t in lora.target_modules if t != "all-linear" and t not in has]
    if missing:
        raise ConfigError(f"config key '{key}.target_modules': the model has no module {missing}; "
                          f"it has {has} (or use 'all-linear')")
    try:
        return get_peft_model(model, peft_config(lora, task_type))
    except (ValueError, TypeError, NotImplementedError) as err:
        raise ConfigError(f"config key '{key}': peft cannot put LoRA adapters on this "
                          f"{type(model).__name__}: {' '.join(str(err).split())}") from None


def check_lora(lora: LoRASection, model_path: str, key: str, *, value_head: bool = False) -> None:
    """Start-up check of `lora` against the model at `model_path`, built on the meta
    device (cheap: config only). ConfigError naming `key` on bad input."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(model_path, **({"num_labels": 1} if value_head else {}))
    auto = AutoModelForTokenClassification if value_head else AutoModelForCausalLM
    try:
        with torch.device("meta"):
            model = auto.from_config(config)
    except ValueError as err:  # an architecture with no causal-LM / token-classification class
        raise ConfigError(f"config key '{key}': LoRA needs a {auto.__name__} model; {model_path}: "
                          f"{' '.join(str(err).split())[:200]}") from None
    add_adapters(model, lora, "TOKEN_CLS" if value_head else "CAUSAL_LM", key)


def vllm_max_lora_rank(rank: int, key: str = "actor.lora.rank") -> int:
    """The smallest rank vLLM accepts as max_lora_rank that holds `rank`."""
    for allowed in VLLM_MAX_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ConfigError(f"config key '{key}' is {rank}; vLLM serves adapters of rank <= {VLLM_MAX_LORA_RANKS[-1]} "
                      f"(or set sync.lora_merge: true)")


def is_adapter(name: str) -> bool:
    return ".lora_" in name


def hf_name(peft_name: str) -> str:
    """The base model's name of a wrapped parameter: `base_model.model.X.base_layer.weight` -> `X.weight`."""
    return peft_name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")


def adapter_file_name(peft_name: str) -> str:
    """A parameter's name in peft's adapter file (adapter_model.safetensors): without the adapter's name."""
    return peft_name.replace(f".{ADAPTER}.", ".")


def adapter_tensors(named: Iterable[tuple[str, Tensor]]) -> dict[str, Tensor]:
    """CPU copies of the adapter parameters among `named` (wrapped names), named as in peft's file."""
    return {adapter_file_name(n): t.detach().to("cpu", copy=True) for n, t in named if is_adapter(n)}


def lora_deltas(peft_model, named: Iterable[tuple[str, Tensor]]) -> dict[str, Tensor]:
    """HF name of each adapted weight -> scaling * B @ A, from the full adapter tensors in `named`."""
    from peft.tuners.lora import LoraLayer

    tensors = dict(named)
    deltas = {}
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or ADAPTER not in module.lora_A:
            continue
        a = tensors[f"{name}.lora_A.{ADAPTER}.weight"].float()
        b = tensors[f"{name}.lora_B.{ADAPTER}.weight"].float()
        delta = (b @ a) * module.scaling[ADAPTER]
        deltas[hf_name(f"{name}.weight")] = delta.T if getattr(module, "fan_in_fan_out", False) else delta
    return deltas


def merged_tensors(named: Iterator[tuple[str, Tensor]], deltas: dict[str, Tensor]) -> Iterator[tuple[str, Tensor]]:
    """(HF name, base weight + its adapter delta) of every base parameter among `named`
    (wrapped names; adapter parameters are skipped), in order."""
    for name, tensor in named:
        if is_adapter(name):
            continue
        hf = hf_name(name)
        delta = deltas.get(hf)
        yield hf, tensor if delta is None else (tensor.float() + delta.to(tensor.device)).to(tensor.dtype)


def adapter_config_dict(peft_model, base_model: str) -> dict:
    """peft's adapter_config.json of `peft_model`'s adapter (target modules as peft resolved
    them, e.g. "all-linear" -> the layer names), for loaders that read the file (vLLM, peft)."""
    config = peft_model.peft_config[ADAPTER].to_dict()
    config["base_model_name_or_path"] = base_model
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}

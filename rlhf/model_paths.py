"""Model folders a config names: resolved and checked in the driver, before any run
directory or worker exists, so a wrong path fails in seconds with the key's name
instead of deep inside a Ray actor.

    path = check_model("model.policy", cfg.model.policy)
    tokenizer = load_tokenizer("model.policy", path)
"""
from __future__ import annotations

import json
from pathlib import Path

from rlhf.config import ConfigError

# Hugging Face checkpoint files (single file or shards + index)
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


def check_model(key: str, ref: str) -> str:
    """Local path of `ref` ("tiny:<name>" builds the kit) once it is a loadable HF model
    folder: config.json that transformers reads, and weights."""
    from rlhf.tiny import resolve

    try:
        path = Path(resolve(ref))
    except KeyError as err:  # unknown tiny artifact
        raise ConfigError(f"config key '{key}': {err.args[0]}") from None
    if not path.exists():
        raise ConfigError(f"config key '{key}': model path not found: {path}")
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(f"config key '{key}': {path} has no config.json; expected a Hugging Face model folder")
    try:
        json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config key '{key}': {config} is not valid JSON ({err})") from None
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path)
    except Exception as err:  # unknown model_type, missing fields: transformers' own words
        raise ConfigError(f"config key '{key}': transformers cannot read {config}: {_first_line(err)}") from None
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
        raise ConfigError(f"config key '{key}': {path} has no weights ({' or '.join(WEIGHT_FILES)})")
    _check_safetensors(key, path)
    return str(path)


def _check_safetensors(key: str, path: Path) -> None:
    """Each safetensors file's header parses (reads the header only, not the tensors)."""
    from safetensors import safe_open

    for weights in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except Exception as err:  # truncated or not a safetensors file
            raise ConfigError(f"config key '{key}': {weights} is not a readable safetensors file "
                              f"({_first_line(err)})") from None


def load_tokenizer(key: str, path: str):
    """The tokenizer of a checked model folder; it must have EOS and padding tokens."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:
        raise ConfigError(f"config key '{key}': cannot load the tokenizer of {path}: {_first_line(err)}") from None
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ConfigError(f"config key '{key}': the tokenizer of {path} needs a pad and an EOS token")
    return tokenizer


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__

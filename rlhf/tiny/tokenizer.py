"""A character-level tokenizer trained with `tokenizers`.

Every printable ASCII character is one token, so the same tokenizer serves the
arithmetic task and English text (HH-RLHF preference data for the reward model).
"""
from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, trainers

PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"
SPECIALS = [PAD, EOS, BOS]
ALPHABET = sorted(set(string.printable) - set("\x0b\x0c\r"))


def train_char_tokenizer(corpus: list[str]) -> Tokenizer:
    """BPE with a budget of zero merges = one token per character (deterministic)."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False))
    tok.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(
        vocab_size=len(SPECIALS) + len(ALPHABET), special_tokens=SPECIALS,
        initial_alphabet=ALPHABET, limit_alphabet=len(ALPHABET), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def save_hf_tokenizer(tok: Tokenizer, out_dir: Path, model_max_length: int):
    """Wrap in a transformers fast tokenizer and save (tokenizer.json + config)."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=BOS,
        model_max_length=model_max_length, padding_side="left")
    hf.save_pretrained(out_dir)
    return hf

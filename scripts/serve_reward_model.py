#!/usr/bin/env python
"""Serve a Hugging Face sequence-classification reward model over HTTP.

What it does: loads a local model folder with AutoModelForSequenceClassification and
AutoTokenizer (safetensors weights only, trust_remote_code=False) and answers
POST /score {"prompts", "responses", "labels"} with {"scores"}: the model's score of
prompt + response + EOS read at the last non-pad token, i.e. at EOS, where `rlhf rm`
trains the score and the PPO reward-model worker reads it (`--no-eos` for models
trained without it; labels are ignored). GET /health
says it is up. Pair it with RewardSpec("rm", "remote", kwargs={"url": "http://..."}).

Left out on purpose: authentication (it binds 127.0.0.1 unless told otherwise),
multi-GPU sharding, batching across concurrent requests (calls are serialised).

Run:
    python scripts/serve_reward_model.py --model PATH [--host 127.0.0.1] [--port 8000]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from rewards.server import make_server  # noqa: E402


def load_scorer(model_path: str, *, device: str = "cpu", batch_size: int = 8, max_length: int = 2048,
                append_eos: bool = True):
    """score(prompts, responses, labels) -> list[float] for the model at model_path
    (append_eos: end each text with the tokenizer's EOS unless it already does)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=False)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, trust_remote_code=False, use_safetensors=True)
    model.to(device).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"  # positions of real tokens stay 0..n-1
    tok.truncation_side = "left"  # too long: drop the prompt's start, keep the response's end (scored there)
    model.config.pad_token_id = tok.pad_token_id
    # Decoder reward models: run the backbone and apply the `score` head ourselves at
    # the last token the attention mask keeps, so a pad id equal to eos (common) cannot
    # move the read-out. Other heads (e.g. BERT's pooled [CLS]) use the model's logits.
    head = getattr(model, "score", None)
    backbone = getattr(model, model.base_model_prefix, None) if isinstance(head, torch.nn.Linear) else None

    @torch.no_grad()
    def score(prompts: list[str], responses: list[str], labels: list) -> list[float]:
        out: list[float] = []
        texts = [p + r for p, r in zip(prompts, responses)]
        for s in range(0, len(texts), batch_size):
            ids = tok(texts[s : s + batch_size], truncation=True, max_length=max_length - append_eos)["input_ids"]
            if append_eos and tok.eos_token_id is not None:
                ids = [x if x[-1:] == [tok.eos_token_id] else x + [tok.eos_token_id] for x in ids]
            enc = tok.pad({"input_ids": ids}, return_tensors="pt").to(device)
            if backbone is not None:
                hidden = backbone(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                mask = enc["attention_mask"]
                last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)  # Shape: (b,)
                logits = head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
            else:
                logits = model(**enc).logits  # Shape: (b, num_labels)
            out.extend(logits[:, 0].float().tolist())  # num_labels == 1 for reward models
        return out

    return score


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="local folder with config, tokenizer and *.safetensors")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s; no auth: keep it local unless firewalled)")
    ap.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one")
    ap.add_argument("--device", default="cpu", help="torch device for the model")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    ap.add_argument("--max-length", type=int, default=2048, help="longer prompt+response(+EOS) keep their last this many tokens")
    ap.add_argument("--no-eos", action="store_true", help="do not end each prompt+response with EOS")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    scorer = load_scorer(args.model, device=args.device, batch_size=args.batch_size, max_length=args.max_length,
                         append_eos=not args.no_eos)
    server = make_server(scorer, args.host, args.port)
    logging.info("serving %s at %s (POST /score, GET /health)", args.model, server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

"""The tiny kit's build, run as a child process by `rlhf.tiny.kit.build_all`:

    python -m rlhf.tiny.build OUT_DIR

(with rlhf.tiny.kit.DETERMINISTIC_ENV set, so every x86 CPU runs the same kernels).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from rlhf.tiny import task
from rlhf.tiny.kit import ARTIFACTS, SPEC, weights_fingerprint
from rlhf.tiny.models import build_policy, build_scorer, count_parameters, llama_config
from rlhf.tiny.tokenizer import save_hf_tokenizer, train_char_tokenizer
from rlhf.tiny.warmstart import pass_rates, supervised_warm_start


def build_into(out: Path) -> None:
    torch.set_num_threads(1)
    seed = SPEC["seed"]
    train_rows, eval_rows = task.make_splits(SPEC["train_prompts"], SPEC["eval_prompts"], seed=seed)
    task.write_jsonl(train_rows, out / ARTIFACTS["arith_train"])
    task.write_jsonl(eval_rows, out / ARTIFACTS["arith_eval"])
    task.write_jsonl([{"prompt": r["prompt"], "response": r["label"]} for r in train_rows],
                     out / ARTIFACTS["arith_sft"])

    tok = train_char_tokenizer([r["prompt"] + r["label"] for r in train_rows[:2000]])
    paths = {name: out / ARTIFACTS[name] for name in ("policy", "policy_init", "scorer")}
    for path in paths.values():
        hf_tok = save_hf_tokenizer(tok, path, model_max_length=512)
    ids = (len(hf_tok), hf_tok.pad_token_id, hf_tok.eos_token_id, hf_tok.bos_token_id)

    policy = build_policy(llama_config(*ids), seed)
    policy.save_pretrained(paths["policy_init"])
    build_scorer(llama_config(*ids), seed + 2).save_pretrained(paths["scorer"])
    started = time.time()
    losses = supervised_warm_start(policy, hf_tok, train_rows, steps=SPEC["warm_start_steps"],
                                   p_correct=SPEC["teacher_p_correct"], lr=SPEC["warm_start_lr"], seed=seed)
    policy.generation_config.pad_token_id = hf_tok.pad_token_id
    policy.save_pretrained(paths["policy"])
    # Rows 0-255 of the held-out split are what RL runs evaluate on.
    rates = pass_rates(policy, hf_tok, eval_rows[:256], k=8, seed=seed)
    info = {"params": count_parameters(policy), "final_loss": sum(losses[-50:]) / 50,
            "warm_start_seconds": round(time.time() - started, 1), **rates,
            "fingerprint": weights_fingerprint(policy)}
    (paths["policy"] / "warm_start.json").write_text(json.dumps(info, indent=1))
    print(f"[tiny] policy {info['params'] / 1e6:.2f}M params, warm start loss {info['final_loss']:.3f}; "
          f"held-out: greedy pass@1 {rates['greedy_pass@1']:.1%} (carry forgotten {rates['greedy_forgot_carry']:.1%}), "
          f"sampled pass@1 {rates['sampled_pass@1']:.1%}, pass@8 {rates['pass@8']:.1%}", flush=True)


if __name__ == "__main__":
    build_into(Path(sys.argv[1]))

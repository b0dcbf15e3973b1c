"""The tiny agent kit's build, run as a child process by `rlhf.tiny.kit.build_agent`:

    python -m rlhf.tiny.agent_build OUT_DIR TINY_POLICY_INIT_DIR

(with rlhf.tiny.kit.DETERMINISTIC_ENV set). The policy is a fresh init of the tiny
policy's architecture with its tokenizer, warm-started on the noisy teacher's transcripts.
"""
from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from rlhf.tiny import agent_task
from rlhf.tiny.agent_warmstart import agent_rates, agent_warm_start
from rlhf.tiny.kit import AGENT_ARTIFACTS, AGENT_SPEC, weights_fingerprint
from rlhf.tiny.models import build_policy, count_parameters


def sft_rows(rows: list[dict], teacher: dict, seed: int) -> list[dict]:
    """One teacher transcript per row: prompt, response text, and its (text, policy) segments."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        mode = agent_task.draw_mode(row, rng, teacher)
        segments = agent_task.teacher_transcript(row, mode, rng)
        out.append({"prompt": row["prompt"], "response": "".join(t for t, _ in segments), "mode": mode,
                    "segments": [{"text": t, "policy": p} for t, p in segments]})
    return out


def build_into(out: Path, base: Path) -> None:
    torch.set_num_threads(1)
    spec, seed = AGENT_SPEC, AGENT_SPEC["seed"]
    train_rows, eval_rows = agent_task.make_splits(spec["train_prompts"], spec["eval_prompts"], seed=seed)
    agent_task.write_jsonl(train_rows, out / AGENT_ARTIFACTS["agent_train"])
    agent_task.write_jsonl(eval_rows, out / AGENT_ARTIFACTS["agent_eval"])
    agent_task.write_jsonl(sft_rows(train_rows, spec["teacher"], seed), out / AGENT_ARTIFACTS["agent_sft"])

    tokenizer, config = AutoTokenizer.from_pretrained(base), AutoConfig.from_pretrained(base)
    policy = build_policy(config, seed)
    started = time.time()
    losses = agent_warm_start(policy, tokenizer, train_rows, teacher=spec["teacher"], steps=spec["warm_start_steps"],
                              batch_size=spec["warm_start_batch"], lr=spec["warm_start_lr"], seed=seed)
    path = out / AGENT_ARTIFACTS["agent_policy"]
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    policy.save_pretrained(path)
    tokenizer.save_pretrained(path)
    trained = time.time() - started
    # Rows 0-255 of the held-out split are what RL runs evaluate on.
    rates = agent_rates(policy, tokenizer, eval_rows[:256], k=8, seed=seed)
    info = {"params": count_parameters(policy), "final_loss": sum(losses[-20:]) / 20,
            "warm_start_seconds": round(trained, 1), "measure_seconds": round(time.time() - started - trained, 1),
            **rates, "fingerprint": weights_fingerprint(policy)}
    (path / "info.json").write_text(json.dumps(info, indent=1))
    print(f"[tiny] agent policy {info['params'] / 1e6:.2f}M params, warm start loss {info['final_loss']:.3f}; "
          f"held-out: greedy exact {rates['greedy_exact']:.1%}, pass@8 {rates['pass@8']:.1%}, "
          f"sampled exact {rates['sampled_exact']:.1%}, tool calls {rates['tool_call_rate']:.1%}, "
          f"tool-call errors {rates['format_error_rate']:.1%}", flush=True)


if __name__ == "__main__":
    build_into(Path(sys.argv[1]), Path(sys.argv[2]))

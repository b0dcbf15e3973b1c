"""Build, cache and resolve the tiny artifacts (see rlhf/tiny/__init__.py)."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from rlhf.tiny import task

PREFIX = "tiny:"
# Everything that changes the artifacts; its hash names the cache folder.
SPEC = {
    "version": 1,
    "seed": 1234,
    "train_prompts": 6000,
    "eval_prompts": 512,
    "warm_start_max_steps": 1500,
    "warm_start_target_acc": 0.2,    # stop early: RL needs room to improve
    "warm_start_lr": 2e-3,
    "arch": "TinyArch()",
}
ARTIFACTS = {
    "policy": "models/policy",          # warm-started causal LM
    "policy_init": "models/policy_init",  # same architecture, random init (SFT starting point)
    "scorer": "models/scorer",          # sequence scorer backbone (reward model / critic init)
    "arith_train": "data/arith_train.jsonl",
    "arith_eval": "data/arith_eval.jsonl",
    "arith_sft": "data/arith_sft.jsonl",  # prompt/response pairs for `rlhf sft`
}


def cache_root() -> Path:
    base = Path(os.environ.get("RLHF_CACHE_DIR", Path.home() / ".cache" / "rlhf"))
    digest = hashlib.sha256(json.dumps(SPEC, sort_keys=True).encode()).hexdigest()[:12]
    return base / f"tiny-{digest}"


def is_tiny(ref: str | None) -> bool:
    return isinstance(ref, str) and ref.startswith(PREFIX)


def resolve(ref: str) -> str:
    """'tiny:<name>' -> local path (building the kit on first use); other refs unchanged."""
    if not is_tiny(ref):
        return ref
    name = ref[len(PREFIX):]
    if name not in ARTIFACTS:
        raise KeyError(f"unknown tiny artifact {ref!r}; available: {sorted(ARTIFACTS)}")
    root = cache_root()
    if not (root / "COMPLETE").exists():
        build_all(root)
    return str(root / ARTIFACTS[name])


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build_all(root: Path | None = None, log=print) -> Path:
    """Build every artifact into `root` atomically (a temp folder renamed at the end)."""
    root = root or cache_root()
    with _lock(root.parent / f"{root.name}.lock"):
        if (root / "COMPLETE").exists():
            return root
        started = time.time()
        tmp = root.parent / f"{root.name}.building"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "data").mkdir(parents=True)
        _build_into(tmp, log)
        (tmp / "COMPLETE").write_text(json.dumps({"spec": SPEC, "seconds": round(time.time() - started, 1)}))
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        log(f"[tiny] built in {time.time() - started:.0f}s -> {root}")
    return root


def _build_into(out: Path, log) -> None:
    import torch

    from rlhf.tiny.models import build_policy, build_scorer, count_parameters, llama_config
    from rlhf.tiny.tokenizer import save_hf_tokenizer, train_char_tokenizer
    from rlhf.tiny.warmstart import greedy_accuracy, supervised_warm_start

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    seed = SPEC["seed"]
    train_rows, eval_rows = task.make_splits(SPEC["train_prompts"], SPEC["eval_prompts"], seed=seed)
    task.write_jsonl(train_rows, out / ARTIFACTS["arith_train"])
    task.write_jsonl(eval_rows, out / ARTIFACTS["arith_eval"])
    task.write_jsonl([{"prompt": r["prompt"], "response": r["label"]} for r in train_rows],
                     out / ARTIFACTS["arith_sft"])

    tok = train_char_tokenizer([r["prompt"] + r["label"] for r in train_rows[:2000]])
    paths = {name: out / ARTIFACTS[name] for name in ("policy", "policy_init", "scorer")}
    hf_tok = None
    for path in paths.values():
        hf_tok = save_hf_tokenizer(tok, path, model_max_length=512)
    config = llama_config(len(hf_tok), hf_tok.pad_token_id, hf_tok.eos_token_id, hf_tok.bos_token_id)

    policy = build_policy(config, seed)
    policy.save_pretrained(paths["policy_init"])
    build_scorer(llama_config(len(hf_tok), hf_tok.pad_token_id, hf_tok.eos_token_id, hf_tok.bos_token_id),
                 seed + 2).save_pretrained(paths["scorer"])
    # Held-out rows 256-511 decide when to stop; rows 0-255 (what RL evaluates on)
    # stay unseen by this choice.
    losses, acc = supervised_warm_start(
        policy, hf_tok, train_rows, max_steps=SPEC["warm_start_max_steps"], lr=SPEC["warm_start_lr"],
        seed=seed, stop_at_accuracy=SPEC["warm_start_target_acc"], probe_rows=eval_rows[256:512], probe_every=50)
    acc = greedy_accuracy(policy, hf_tok, eval_rows[:256])
    policy.generation_config.pad_token_id = hf_tok.pad_token_id
    policy.save_pretrained(paths["policy"])
    (out / "models" / "policy" / "warm_start.json").write_text(json.dumps(
        {"params": count_parameters(policy), "final_loss": losses[-1], "greedy_exact_acc": acc}))
    log(f"[tiny] policy {count_parameters(policy)/1e6:.2f}M params, warm start loss {losses[-1]:.3f}, "
        f"greedy exact accuracy {acc:.1%}")

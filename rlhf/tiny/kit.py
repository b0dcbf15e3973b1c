"""Build, cache and resolve the tiny artifacts (see rlhf/tiny/__init__.py)."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

PREFIX = "tiny:"
# Everything that changes the artifacts; its hash names the cache folder.
SPEC = {
    "version": 2,
    "seed": 1234,
    "task": "two-digit addition with a carry",
    "train_prompts": 3000,
    "eval_prompts": 512,
    "teacher_p_correct": 0.25,       # the warm start's teacher forgets the carry 75% of the time
    "warm_start_steps": 1200,
    "warm_start_lr": 2e-3,
    "arch": "TinyArch()",
}
ARTIFACTS = {
    "policy": "models/policy",          # warm-started causal LM
    "policy_init": "models/policy_init",  # same architecture, random init (SFT starting point)
    "scorer": "models/scorer",          # sequence scorer backbone (reward model / critic init)
    "arith_train": "data/arith_train.jsonl",
    "arith_eval": "data/arith_eval.jsonl",
    "arith_sft": "data/arith_sft.jsonl",  # prompt/response pairs (right answers) for `rlhf sft`
}
# The agentic demo's kit (rlhf/tiny/agent_task.py), a second cache folder built on first use
# of one of its artifacts; its policy has the tiny policy's tokenizer and architecture.
AGENT_SPEC = {
    "version": 2,
    "seed": 4321,
    "task": "3-digit x 2-digit products with a calculator tool",
    "train_prompts": 20000,
    "eval_prompts": 1024,
    # The noisy teacher: per transcript mode, careful on multipliers >= careful_from, else sloppy.
    "teacher": {"careful_from": 80,
                "careful": {"correct": 0.7, "guess": 0.1, "bad_key": 0.1, "unquoted": 0.05, "no_brace": 0.05},
                "sloppy": {"correct": 0.15, "guess": 0.45, "bad_key": 0.35, "unquoted": 0.025, "no_brace": 0.025}},
    "warm_start_steps": 400,
    "warm_start_batch": 32,
    "warm_start_lr": 2e-3,
}
AGENT_ARTIFACTS = {
    "agent_policy": "models/agent_policy",     # warm-started on the teacher's transcripts
    "agent_train": "data/agent_train.jsonl",   # prompt/label rows
    "agent_eval": "data/agent_eval.jsonl",
    "agent_sft": "data/agent_sft.jsonl",       # teacher transcripts: prompt/response (+ policy-token segments)
}
# The same kernels on every x86 CPU: ATen's AVX2 code paths and MKL's AVX2 branch (its
# "conditional numerical reproducibility" mode), one thread. Without these, AVX-512
# machines round differently and train a different warm start from the same seed.
DETERMINISTIC_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "1",
                     "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
# sha256 of the policy's weights as built on the reference machine (AMD EPYC, AVX2 only).
REFERENCE_FINGERPRINT = "eae7c3b9316eba9d0c5842a9caf2bff48f91e42718abea85aae93506741e3de2"


def cache_root() -> Path:
    return _cache_folder("tiny", SPEC)


def agent_cache_root() -> Path:
    # The agent kit reuses the tiny kit's tokenizer and architecture: its hash covers both specs.
    return _cache_folder("tiny-agent", {"agent": AGENT_SPEC, "base": SPEC})


def _cache_folder(prefix: str, spec: dict) -> Path:
    base = Path(os.environ.get("RLHF_CACHE_DIR", Path.home() / ".cache" / "rlhf"))
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return base / f"{prefix}-{digest}"


def is_tiny(ref: str | None) -> bool:
    return isinstance(ref, str) and ref.startswith(PREFIX)


def resolve(ref: str) -> str:
    """'tiny:<name>' -> local path (building the kit on first use); other refs unchanged."""
    if not is_tiny(ref):
        return ref
    name = ref[len(PREFIX):]
    if name in AGENT_ARTIFACTS:
        root = agent_cache_root()
        if not (root / "COMPLETE").exists():
            build_agent(root)
        return str(root / AGENT_ARTIFACTS[name])
    if name not in ARTIFACTS:
        raise KeyError(f"unknown tiny artifact {ref!r}; available: {sorted({**ARTIFACTS, **AGENT_ARTIFACTS})}")
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
    """Build every artifact into `root` atomically (a temp folder renamed at the end), in a
    child process with the deterministic kernel settings above."""
    root = root or cache_root()
    built = _build_atomically(root, ["rlhf.tiny.build"], "models/policy/warm_start.json", SPEC,
                              "the tiny-model kit", "2-4 minutes", log)
    if built is not None:
        log(_fingerprint_verdict(built["fingerprint"]))
    return root


def build_agent(root: Path | None = None, log=print) -> Path:
    """Build the agent kit like `build_all` (the tiny kit first: its tokenizer and config)."""
    root = root or agent_cache_root()
    base = resolve(PREFIX + "policy_init")
    _build_atomically(root, ["rlhf.tiny.agent_build", base], "models/agent_policy/info.json", AGENT_SPEC,
                      "the tiny agent kit", "5-10 minutes", log)
    return root


def _build_atomically(root: Path, module_args: list[str], info_file: str, spec: dict, what: str, eta: str,
                      log) -> dict | None:
    """Run `python -m <module> <tmp> <args>` under a lock, mark it COMPLETE and rename it to
    `root`; returns the build's info (None if another process had built it)."""
    with _lock(root.parent / f"{root.name}.lock"):
        if (root / "COMPLETE").exists():
            return None
        started = time.time()
        tmp = root.parent / f"{root.name}.building"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "data").mkdir(parents=True)
        log(f"[tiny] building {what} into {root} (about {eta} on 2 cores, once)")
        module, *args = module_args
        subprocess.run([sys.executable, "-m", module, str(tmp), *args], check=True,
                       env={**os.environ, **DETERMINISTIC_ENV})
        info = json.loads((tmp / info_file).read_text())
        (tmp / "COMPLETE").write_text(json.dumps({"spec": spec, "seconds": round(time.time() - started, 1),
                                                  "fingerprint": info["fingerprint"]}))
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        log(f"[tiny] built in {time.time() - started:.0f}s -> {root}")
    return info


def _fingerprint_verdict(fingerprint: str) -> str:
    if REFERENCE_FINGERPRINT is None:
        return f"[tiny] policy fingerprint {fingerprint[:16]}"
    if fingerprint == REFERENCE_FINGERPRINT:
        return f"[tiny] policy fingerprint {fingerprint[:16]}: identical to the reference build"
    return (f"[tiny] policy fingerprint {fingerprint[:16]} differs from the reference build "
            f"{REFERENCE_FINGERPRINT[:16]}: this CPU computes with other kernels despite {DETERMINISTIC_ENV}; "
            "the recipes' figures in the README may differ slightly here")


def weights_fingerprint(model) -> str:
    """sha256 over the parameters' bytes in name order (identical weights <=> same digest)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

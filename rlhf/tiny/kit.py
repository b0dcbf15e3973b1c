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
# The same kernels on every x86 CPU: ATen's AVX2 code paths and MKL's AVX2 branch (its
# "conditional numerical reproducibility" mode), one thread. Without these, AVX-512
# machines round differently and train a different warm start from the same seed.
DETERMINISTIC_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "1",
                     "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
# sha256 of the policy's weights as built on the reference machine (AMD EPYC, AVX2 only).
REFERENCE_FINGERPRINT = "eae7c3b9316eba9d0c5842a9caf2bff48f91e42718abea85aae93506741e3de2"


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
    """Build every artifact into `root` atomically (a temp folder renamed at the end), in a
    child process with the deterministic kernel settings above."""
    root = root or cache_root()
    with _lock(root.parent / f"{root.name}.lock"):
        if (root / "COMPLETE").exists():
            return root
        started = time.time()
        tmp = root.parent / f"{root.name}.building"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "data").mkdir(parents=True)
        log(f"[tiny] building the tiny-model kit into {root} (about 2-4 minutes on 2 cores, once)")
        subprocess.run([sys.executable, "-m", "rlhf.tiny.build", str(tmp)], check=True,
                       env={**os.environ, **DETERMINISTIC_ENV})
        info = json.loads((tmp / "models" / "policy" / "warm_start.json").read_text())
        (tmp / "COMPLETE").write_text(json.dumps({"spec": SPEC, "seconds": round(time.time() - started, 1),
                                                  "fingerprint": info["fingerprint"]}))
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        log(f"[tiny] built in {time.time() - started:.0f}s -> {root}")
        log(_fingerprint_verdict(info["fingerprint"]))
    return root


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

"""Atomic checkpoints: a crash mid-write leaves the previous one intact.

A checkpoint is a folder `step-000012/` written as `step-000012.tmp/` and renamed
when complete (rename is atomic on POSIX); `COMPLETE` inside marks it. Resume
picks the newest folder that has it. Controller state is JSON (no pickles);
worker states are written by the workers into sub-folders.
"""
from __future__ import annotations

import ast
import json
import os
import random
import shutil
from pathlib import Path

import torch

MARKER = "COMPLETE"


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def staging_dir(run_dir: Path, step: int) -> Path:
    path = checkpoint_root(run_dir) / f"step-{step:06d}.tmp"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def commit(staging: Path, state: dict, keep: int) -> Path:
    """Write the controller state, mark complete, rename into place, prune old ones."""
    (staging / "state.json").write_text(json.dumps(state, indent=1))
    (staging / MARKER).write_text("ok")
    _fsync_dir(staging)
    final = staging.with_suffix("")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    _fsync_dir(final.parent)
    _prune(final.parent, keep)
    return final


def latest(run_dir: Path) -> Path | None:
    root = checkpoint_root(run_dir)
    if not root.exists():
        return None
    done = sorted(p for p in root.glob("step-*") if p.suffix != ".tmp" and (p / MARKER).exists())
    return done[-1] if done else None


def read_state(ckpt: Path) -> dict:
    if not (ckpt / MARKER).exists():
        raise FileNotFoundError(f"checkpoint {ckpt} is incomplete (no {MARKER} marker)")
    return json.loads((ckpt / "state.json").read_text())


def rng_state() -> dict:
    """The controller process's Python and torch RNG states, JSON-serialisable."""
    version, internal, gauss_next = random.getstate()
    return {"python_rng": [version, list(internal), gauss_next], "torch_rng": torch.get_rng_state().tolist()}


def restore_rng(state: dict) -> None:
    """Put back what `rng_state` saved (older checkpoints stored the Python state as its repr)."""
    py = state["python_rng"]
    py = ast.literal_eval(py) if isinstance(py, str) else py
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("step-*") if p.suffix != ".tmp" and (p / MARKER).exists())
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob("step-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

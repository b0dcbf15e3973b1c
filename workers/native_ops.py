"""DeepSpeed's C++ ops, built once per Python environment, at setup.

DeepSpeed builds its ops on first use with torch's JIT extension loader. On CPU a
DeepSpeed world needs one: the shared-memory all-reduce (`deepspeed_shm_comm`), 2-3
minutes of compiling inside the first role start-up. Torch keeps such builds in one
folder per user (~/.cache/torch_extensions), and a build made by another environment
(other include paths) is rebuilt on the next use. So every process of a run uses a
folder inside its own environment (`<venv>/torch_extensions`, unless
TORCH_EXTENSIONS_DIR is set), and `scripts/setup.sh` builds the ops there:

    python -m workers.native_ops        # prints what it built and how long it took

On GPU nothing is built here: a NCCL world needs no op, and the trainers use torch's
fused AdamW unless DeepSpeed was installed with its ops prebuilt (`workers.device.adam_choice`).
"""
from __future__ import annotations

import os
import sys
import time

# DeepSpeed op builders a world needs, per accelerator (deepspeed.accelerator names).
NEEDED_OPS = {"cpu": ["ShareMemCommBuilder"], "cuda": []}


def extensions_dir() -> str:
    """Where this environment keeps built ops."""
    return os.path.join(sys.prefix, "torch_extensions")


def use_environment_extensions_dir() -> None:
    """Point torch's extension loader at this environment's folder (before any build),
    unless the user chose one."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", extensions_dir())


def prebuild(accelerator_name: str) -> list[tuple[str, float]]:
    """Build (or load, when built already) the ops an `accelerator_name` world needs;
    returns (op name, seconds) per op."""
    use_environment_extensions_dir()
    from deepspeed.accelerator import get_accelerator

    built = []
    for builder_name in NEEDED_OPS.get(accelerator_name, []):
        builder = get_accelerator().create_op_builder(builder_name)
        started = time.time()
        builder.load(verbose=False)
        built.append((builder.NAME, time.time() - started))
    return built


def main() -> None:
    from workers.device import setup_process_env

    device = setup_process_env()
    accelerator = "cuda" if device.is_gpu else "cpu"
    built = prebuild(accelerator)
    ops = ", ".join(f"{name} ({seconds:.0f}s)" for name, seconds in built) or "none needed"
    print(f"[setup] DeepSpeed ops for {accelerator} in {os.environ['TORCH_EXTENSIONS_DIR']}: {ops}")


if __name__ == "__main__":
    main()

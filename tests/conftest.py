"""Shared fixtures. Integration tests share ONE Ray session and the tiny models."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny():
    """Paths of the tiny-model kit (built once, cached in $RLHF_CACHE_DIR)."""
    from rlhf.tiny import ARTIFACTS, resolve

    return {name: resolve(f"tiny:{name}") for name in ARTIFACTS}


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (starting Ray costs seconds)."""
    import ray

    from workers.device import setup_process_env

    setup_process_env()
    if not ray.is_initialized():
        # Logical CPUs > physical: roles ask for fractions, and tests must not starve.
        # address="local": never join a `ray start` cluster running on this machine.
        ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()

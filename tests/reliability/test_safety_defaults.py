"""Safety defaults: services bind 127.0.0.1; weights and checkpoints load without
running code from the file (safetensors, torch.load(weights_only=True))."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


class RunsCode:
    """Unpickling this runs `touch <marker>`: what a malicious checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_reward_server_binds_loopback_by_default():
    from rewards.server import make_server

    server = make_server(lambda prompts, responses, labels: [0.0] * len(responses), port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
    help_text = subprocess.run([sys.executable, str(ROOT / "scripts" / "serve_reward_model.py"), "--help"],
                               capture_output=True, text=True, check=True).stdout
    assert "127.0.0.1" in help_text


def test_local_ray_dashboard_binds_loopback(monkeypatch):
    import ray

    from rlhf.cli import connect_ray
    from rlhf.config import load_config

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = load_config(ROOT / "recipes" / "ppo_tiny.yaml", ["cluster.dashboard=true"])
    assert connect_ray(cfg) is True
    assert seen["dashboard_host"] == "127.0.0.1" and seen["include_dashboard"] is True
    assert "OMP_NUM_THREADS" not in seen["runtime_env"]["env_vars"]  # cluster.torch_threads=0: Ray decides


def test_pickled_weights_are_refused(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    from workers.forwards import load_causal_lm

    model = AutoModelForCausalLM.from_pretrained(tiny["policy"])
    folder = tmp_path / "bin_only"  # the pickle-based format only
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        load_causal_lm(str(folder))


def test_deepspeed_checkpoint_files_load_weights_only(tmp_path):
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    from workers.trainer_base import load_checkpoints_weights_only

    class Engine:  # the one attribute load_checkpoints_weights_only touches
        checkpoint_engine = TorchCheckpointEngine()

    engine = Engine()
    load_checkpoints_weights_only(engine)
    good = tmp_path / "good.pt"
    torch.save({"module": {"w": torch.ones(2)}, "step": 3}, good)
    assert engine.checkpoint_engine.load(str(good))["step"] == 3

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"module": {}, "payload": RunsCode(str(marker))}, evil)
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        engine.checkpoint_engine.load(str(evil))
    assert not marker.exists()

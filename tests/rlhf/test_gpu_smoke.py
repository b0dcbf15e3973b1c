"""scripts/gpu_smoke.sh / gpu_smoke.py on a machine without a GPU: it refuses, its
arguments are checked, and its summary of a run's metrics says what passed."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_smoke.sh"


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "scripts" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_smoke"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_smoke"]


def fake_nvidia_smi(folder: Path, listing: str) -> dict:
    """An environment whose nvidia-smi -L prints `listing`."""
    tool = folder / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\nprintf '{listing}'\n")
    tool.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:/usr/bin:/bin"}


@pytest.mark.parametrize("listing", [None, ""])
def test_shell_script_refuses_without_a_gpu(tmp_path, listing):
    env = {**os.environ, "PATH": "/usr/bin:/bin"} if listing is None else fake_nvidia_smi(tmp_path, listing)
    done = subprocess.run(["bash", str(SCRIPT), "--steps", "2"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert "no NVIDIA GPU here" in done.stderr and "[setup]" not in done.stderr  # refused before installing


def test_gpu_count_reads_nvidia_smi(smoke, tmp_path, monkeypatch):
    env = fake_nvidia_smi(tmp_path, "GPU 0: NVIDIA A100 (UUID: GPU-1)\\nGPU 1: NVIDIA A100 (UUID: GPU-2)\\n")
    monkeypatch.setenv("PATH", env["PATH"])
    assert smoke.gpu_count() == 2
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert smoke.gpu_count() == 0
    assert smoke.main([]) == 2  # no GPU: refuses, runs nothing


@pytest.mark.parametrize("argv, needle", [
    (["--steps", "1"], "--steps must be >= 2"),
    (["--bound", "0"], "--bound must be in"),
    (["--gpus", "0"], "--gpus must be >= 1"),
    (["--min-freed", "-1"], "--min-freed must be >= 0"),
    (["--check", "runs/elsewhere"], "must be a layout"),
])
def test_bad_arguments(smoke, capsys, argv, needle):
    with pytest.raises(SystemExit) as exit_:
        smoke.parse_args(argv)
    assert exit_.value.code == 2 and needle in capsys.readouterr().err


def write_run(folder: Path, diffs, versions, transport: str, freed=None) -> Path:
    folder.mkdir(parents=True)
    rows = [{"step": 0, "eval/reward_mean": 0.1}]
    rows += [{"step": i + 1, "rollout/logprob_diff_mean": d, "rollout/weight_version": v}
             for i, (d, v) in enumerate(zip(diffs, versions))]
    for row, gib in zip(rows[1:], freed or []):
        row["rollout/sleep_freed_gib"] = gib
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder.with_suffix(".log").write_text(f"roles up in 12s (weight sync transport: {transport})\n")
    return folder


def test_summary_of_a_good_run(smoke, tmp_path, capsys):
    run_dir = write_run(tmp_path / "hybrid", [0.011, 0.013], [0.0, 1.0], "cuda_ipc", freed=[7.81, 7.79])
    assert smoke.main(["--check", str(run_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "PASS hybrid steps: ran [1, 2], wanted 1..2",
        "PASS hybrid logprob_diff: rollout/logprob_diff_mean per step [0.011, 0.013] (bound 0.05)",
        "PASS hybrid weight_version: rollout/weight_version per step [0, 1] (wanted 0..1: one sync per step)",
        "PASS hybrid transport: weight sync by cuda_ipc, wanted cuda_ipc",
        "PASS hybrid sleep: GPU memory freed by vLLM's sleep per step [7.81, 7.79] GiB (at least 0.5)",
    ]


def test_a_sleep_that_freed_too_little_fails(smoke, tmp_path, capsys):
    run_dir = write_run(tmp_path / "hybrid", [0.011, 0.013], [0.0, 1.0], "cuda_ipc", freed=[7.8, 0.01])
    assert smoke.main(["--check", str(run_dir)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        "FAIL hybrid sleep: GPU memory freed by vLLM's sleep per step [7.8, 0.01] GiB (at least 0.5)")
    assert smoke.main(["--check", str(run_dir), "--min-freed", "0.005"]) == 0


def test_summary_names_each_failure(smoke, tmp_path, capsys):
    # the second step drifted (a sync that did not land), the version stuck, NCCL instead of IPC
    run_dir = write_run(tmp_path / "split", [0.01, 0.4], [0.0, 0.0], "shm")
    assert smoke.main(["--check", str(run_dir), "--steps", "3"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "FAIL split steps: ran [1, 2], wanted 1..3",
        "FAIL split logprob_diff: rollout/logprob_diff_mean per step [0.01, 0.4] (bound 0.05)",
        "FAIL split weight_version: rollout/weight_version per step [0, 0] (wanted 0..2: one sync per step)",
        "FAIL split transport: weight sync by shm, wanted process_group",
    ]
    # a run that never wrote metrics fails every check instead of passing vacuously
    empty = tmp_path / "x" / "hybrid"
    empty.mkdir(parents=True)
    assert [c.status for c in smoke.check_run(empty, "", "hybrid", "cuda_ipc", 2, 0.05)] == ["FAIL"] * 5


@pytest.mark.parametrize("layout", ["hybrid", "split"])
def test_layouts_are_valid_configs_that_fit_their_gpus(smoke, layout):
    from rlhf.config import load_config
    from rlhf.roles import colocated_plan, resource_problems, role_requests, rollout_sleeps, weight_transfer_backend

    fewest, transport, overrides = smoke.LAYOUTS[layout]
    cfg = load_config(smoke.RECIPE, [*smoke.COMMON, *overrides, "run.total_steps=2"])
    reqs = role_requests(cfg)
    if cfg.cluster.placement == "colocated":  # the hybrid engine reserves whole GPUs
        reqs = colocated_plan(reqs).check_requests(reqs)
    node = {"CPU": 8.0, "GPU": float(fewest), "memory": 64e9}
    assert resource_problems(reqs, [node]) == []
    assert resource_problems(reqs, [{**node, "GPU": fewest - 0.5}]) != []
    assert weight_transfer_backend(cfg) == {"cuda_ipc": "ipc", "process_group": "nccl"}[transport]
    assert rollout_sleeps(cfg) == (layout == "hybrid")

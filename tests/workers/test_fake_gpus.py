"""The GPU path's placement on a CPU machine: a Ray session with 4 fake GPUs and a
CPU-only driver (tests/workers/fake_gpu_probe.py, in a process of its own). Checks
what Ray gives each role's ranks, what each worker decides from it, that the driver
ships no device variables, and the weight transport the workers' reports lead to."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers import device as dev

pytestmark = pytest.mark.integration

PROBE = Path(__file__).with_name("fake_gpu_probe.py")


@pytest.fixture(scope="module")
def probe():
    env = {k: v for k, v in os.environ.items() if k not in ("RLHF_DEVICE", "RAY_ADDRESS")}
    done = subprocess.run([sys.executable, str(PROBE)], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(r: dict) -> dev.DeviceReport:
    return dev.DeviceReport(r["node_id"], r["kind_with_cuda"], r["gpu"])


def test_driver_ships_no_device_variables(probe):
    env_vars = probe["runtime_env"]["env_vars"]
    assert "DS_ACCELERATOR" not in env_vars and "CUDA_VISIBLE_DEVICES" not in env_vars


def test_each_gpu_rank_sees_exactly_its_own_gpu(probe):
    roles = probe["roles"]
    gpu_ranks = [r for role in ("rollout", "actor", "critic", "reference") for r in roles[role]]
    assert len(gpu_ranks) == 4  # the PPO GSM8K recipe: 1 GPU per role
    for r in gpu_ranks:
        assert len(r["granted"]) == 1 and r["visible"] == r["granted"][0]
        assert r["kind_with_cuda"] == "cuda"
        assert r["env_after_setup"] == {"CUDA_VISIBLE_DEVICES": r["visible"], "DS_ACCELERATOR": "cuda"}
        # here torch has no CUDA: a worker given a GPU says so instead of running on CPU
        assert r["detected"].startswith(f"error: Ray gave this worker GPU(s) {r['visible']} but torch sees no CUDA")
    assert sorted(r["visible"] for r in gpu_ranks) == ["0", "1", "2", "3"]


def test_a_cpu_rank_hides_the_nodes_gpus(probe):
    (r,) = probe["roles"]["cpu_role"]
    assert r["granted"] == [] and r["visible"] == "0,1,2,3"  # inherited from the node
    assert r["detected"] == "cpu" and r["kind_with_cuda"] == "cpu"
    assert r["env_after_setup"] == {"CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"}


def test_transport_follows_the_physical_gpu(probe):
    roles, hybrid = probe["roles"], probe["hybrid"]
    # one node, own GPUs: the old "same node -> CUDA IPC" would fail here
    assert roles["actor"][0]["node_id"] == roles["rollout"][0]["node_id"]
    assert dev.choose_transport(report(roles["actor"][0]), [report(roles["rollout"][0])]) == "process_group"
    # two ranks in one GPU bundle (0.5 GPU each) share the physical GPU
    assert hybrid["actor"]["gpu"] == hybrid["rollout"]["gpu"] != hybrid["rollout_alone"]["gpu"]
    assert dev.choose_transport(report(hybrid["actor"]), [report(hybrid["rollout"])]) == "cuda_ipc"
    assert dev.choose_transport(report(hybrid["actor"]),
                                [report(hybrid["rollout"]), report(hybrid["rollout_alone"])]) == "process_group"
    assert dev.choose_transport(report(roles["cpu_role"][0]), [report(roles["cpu_role"][0])]) == "shm"


def test_hybrid_engine_shares_each_gpu_between_an_actor_rank_and_an_engine(probe):
    run = probe["hybrid_run"]
    assert run["bundles"][:2] == [{"GPU": 1.0, "CPU": 1.25}, {"GPU": 1.0, "CPU": 1.0}]
    assert run["slots"] == {"rollout": [0, 1], "actor": [0, 1], "reference": [0]}
    for rank in (0, 1):
        actor, engine = run["actor"][rank], run["rollout"][rank]
        assert actor["gpu"] == engine["gpu"] and actor["visible"] == engine["visible"]
        assert dev.choose_transport(report(actor), [report(engine)]) == "cuda_ipc"
    assert run["actor"][0]["gpu"] != run["actor"][1]["gpu"]
    assert run["reference"][0]["gpu"] == run["actor"][0]["gpu"]
    # each engine shares its GPU with a different actor rank: every actor rank hands its
    # own copy by IPC (vLLM's ipc engine merges the handles per GPU UUID)
    engines = [report(e) for e in run["rollout"]]
    assert dev.choose_transport([report(a) for a in run["actor"]], engines) == "cuda_ipc"
    assert dev.choose_transport(report(run["actor"][0]), engines) == "process_group"  # rank 0 alone cannot


def test_vllm_gets_the_weight_transfer_engine_of_its_layout(probe):
    from workers.vllm_transfer import backend_for

    # hybrid: vLLM's ipc engine; each sync is cuda_ipc from both actor ranks
    run = probe["hybrid_run"]
    for args in run["engine_args"]:
        assert args["weight_transfer_config"] == {"backend": "ipc"}
        assert args["enable_sleep_mode"] and args["gpu_memory_utilization"] == 0.35
        assert args["enforce_eager"] is False and args["enable_prefix_caching"] is True  # CUDA graphs on GPU
        assert "distributed_executor_backend" not in args  # vLLM's default for one GPU
    engines = [report(e) for e in run["rollout"]]
    transport = dev.choose_transport([report(a) for a in run["actor"]], engines)
    assert backend_for(transport, ["ipc", "ipc"], on_gpus=True) == "ipc"
    # the PPO recipe's own GPUs: NCCL from the actor to the engine
    (args,) = probe["recipe_engine_args"]
    assert args["weight_transfer_config"] == {"backend": "nccl"}
    roles = probe["roles"]
    transport = dev.choose_transport([report(r) for r in roles["actor"]], [report(roles["rollout"][0])])
    assert backend_for(transport, ["nccl"], on_gpus=True) == "nccl"

"""The Ray-cluster path end to end: a two-node cluster on this machine (scripts/cluster.sh),
the tiny PPO recipe sent with `ray job submit`, its roles split over both nodes by
cluster.role_resources. Slow (~5 min on 2 cores): scripts/test.sh --slow.

Uses its own ports and temp dir, never the session's local Ray, and always takes the
cluster down, even when the job fails.
"""
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from rlhf.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
RAY = str(VENV / "bin" / "ray")
SHORT = ["run.total_steps=2", "train.prompts_per_step=8", "train.mini_batch_size=32", "train.micro_batch_size=16",
         "data.eval_size=16", "run.log_samples_every=0", "run.export_hf=false", "run.plots=false"]
# rollout + reference on the worker node, actor + critic on the head node
SPLIT = ["cluster.placement=split", "cluster.role_resources.rollout.rlhf_worker=1",
         "cluster.role_resources.reference.rlhf_worker=1", "cluster.role_resources.actor.rlhf_head=1",
         "cluster.role_resources.critic.rlhf_head=1"]

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def free_ports(count: int, start: int = 20000) -> int:
    """First port of `count` consecutive free ones (cluster.sh uses GCS port + 0..3)."""
    for base in range(start, 30000, 10):
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


@pytest.fixture
def cluster():
    """scripts/cluster.sh up ... down, with a private temp dir and free ports."""
    temp_dir = tempfile.mkdtemp(prefix="rlhf-ct-", dir="/tmp")  # short: Ray's socket paths go under it
    base = free_ports(4)
    env = {**os.environ, "RLHF_VENV": str(VENV), "RLHF_CLUSTER_DIR": temp_dir, "RLHF_CLUSTER_PORT": str(base),
           "RLHF_CLUSTER_DASHBOARD_PORT": str(free_ports(1, base + 10)), "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    script = str(ROOT / "scripts" / "cluster.sh")
    try:
        subprocess.run([script, "up"], env=env, check=True, timeout=300)
        yield env, f"http://127.0.0.1:{env['RLHF_CLUSTER_DASHBOARD_PORT']}"
    finally:
        subprocess.run([script, "down"], env=env, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


def ray_job(env, address, command, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, "job", command, "--address", address, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_job_submit_splits_roles_over_two_nodes(cluster, tiny, tmp_path):
    env, address = cluster
    job_id = f"rlhf-test-{uuid.uuid4().hex[:8]}"
    submit = ray_job(env, address, "submit", "--runtime-env", "scripts/runtime_env.yaml", "--submission-id", job_id,
                     "--no-wait", "--", "python", "-m", "rlhf.cli", "train", "recipes/ppo_tiny.yaml",
                     *SHORT, *SPLIT, f"run.output_dir={tmp_path}")
    assert submit.returncode == 0, submit.stderr
    try:
        logs = ray_job(env, address, "logs", "-f", job_id, timeout=900).stdout
    finally:
        status = ray_job(env, address, "status", job_id)
        if "succeeded" not in status.stdout + status.stderr:
            ray_job(env, address, "stop", job_id)
    assert "succeeded" in status.stdout + status.stderr, logs[-5000:]
    assert "[rlhf] placement:" in logs and "[rlhf] done:" in logs

    (run_dir,) = tmp_path.glob("ppo_tiny-*")
    placement = json.loads((run_dir / "placement.json").read_text())
    node = {role: {rank["node_id"] for rank in ranks} for role, ranks in placement.items()}
    assert node["rollout"] == node["reference"] and node["actor"] == node["critic"]
    assert len(node["rollout"] | node["actor"]) == 2, placement  # two distinct nodes

    steps = [r for r in read_metrics(run_dir) if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2]
    assert math.isfinite(steps[-1]["rollout/reward_mean"])
    # weights crossed nodes (gloo group) and reached the engine: vLLM and trainer log-probs agree
    assert steps[-1]["rollout/weight_version"] == 1.0
    assert steps[-1]["rollout/logprob_diff_mean"] < 0.05

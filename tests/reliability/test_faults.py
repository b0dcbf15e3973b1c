"""Fault injection with real processes: a killed worker, a hung one, a run killed while it
writes a checkpoint, NaN/Inf in the batch and in the gradients.

Each case asserts the message (what failed, where) and that no completed checkpoint
or metric line is lost. Runs go through the real CLI entry (`rlhf.cli.main`) on the
session's Ray, except the kill-during-checkpoint run, which needs its own process.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from rlhf.metrics import read_metrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "recipes" / "grpo_tiny.yaml")  # no critic: the fewest roles to start
SHORT = ["train.prompts_per_step=8", "train.mini_batch_size=64", "train.micro_batch_size=32",
         "rollout.max_new_tokens=4", "data.eval_path=null", "run.log_samples_every=0", "run.plots=false",
         "run.export_hf=false", "run.save_every=1"]


def cli(run_dir: Path, *overrides: str) -> int:
    from rlhf.cli import main

    return main(["train", RECIPE, *SHORT, f"run.run_dir={run_dir}", *overrides])


def steps_logged(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir)]


def timeline_steps(run_dir: Path) -> list[int]:
    """The steps in trace.json (rlhf.trace), without those rolled back."""
    from rlhf.trace import load_trace

    return list(load_trace(run_dir).windows)


def complete(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}" / "COMPLETE"


def wait_for(path: Path, timeout: float = 600.0, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(poll)


def our_processes(title: str) -> list[psutil.Process]:
    """This test session's Ray worker processes whose title starts with `title`
    (only descendants of this process: other Ray instances on the machine are left alone)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.cmdline() and proc.cmdline()[0].startswith(title):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def kill_actor_when(path: Path, killed: dict, sig: int = signal.SIGKILL) -> threading.Thread:
    """In the background: once `path` exists, send `sig` (SIGKILL: dead; SIGSTOP: hung)
    to the actor-role worker process(es)."""
    def run():
        wait_for(path)
        procs = our_processes("ray::ActorWorker")
        for proc in procs:
            proc.send_signal(sig)
        killed.update(at=time.monotonic(), pids=[p.pid for p in procs])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# ------------------------------------------------------------------ worker death
def test_dead_worker_without_restart_budget_exits_nonzero_naming_role(ray_session, tiny, tmp_path, capsys):
    run_dir, killed = tmp_path / "run", {}
    thread = kill_actor_when(complete(run_dir, 1), killed)
    code = cli(run_dir, "run.total_steps=4")
    ended = time.monotonic()
    thread.join(timeout=5)
    err = capsys.readouterr().err
    assert killed["pids"], "no actor process found to kill"
    assert code == 1
    assert "actor rank 0 died in" in err and "run.max_restarts=0" in err
    assert ended - killed["at"] < 60  # detected at the next call to the actor, not after a hang
    # nothing completed is lost: step 1's metrics and checkpoint stay
    assert steps_logged(run_dir)[0] == 1
    assert complete(run_dir, 1).exists()


def test_dead_worker_restarts_roles_and_resumes_from_last_checkpoint(ray_session, tiny, tmp_path, capsys):
    run_dir, killed = tmp_path / "run", {}
    thread = kill_actor_when(complete(run_dir, 2), killed)
    code = cli(run_dir, "run.total_steps=4", "run.resume=auto", "run.max_restarts=1")
    thread.join(timeout=5)
    out = capsys.readouterr().out
    assert killed["pids"] and code == 0
    assert "actor rank 0 died in" in out and "restart 1/1" in out
    assert "resumed from" in out and "step-000002" in out
    # one line per step, as if uninterrupted; lines of redone steps are set aside, not lost
    assert steps_logged(run_dir) == [1, 2, 3, 4]
    rolled_back = run_dir / "metrics.rolled_back.jsonl"
    redone = [json.loads(line)["step"] for line in rolled_back.read_text().splitlines()] if rolled_back.exists() else []
    assert all(step > 2 for step in redone)
    assert complete(run_dir, 4).exists()
    assert timeline_steps(run_dir) == [1, 2, 3, 4]  # the new roles' trace continues the file


def test_hung_worker_times_out_and_the_run_restarts_from_the_last_checkpoint(ray_session, tiny, tmp_path, capsys):
    """A worker that stops answering (SIGSTOP: alive, never returns) is caught by
    run.call_timeout_s and handled like a dead one: new roles, resume."""
    run_dir, stopped = tmp_path / "run", {}
    thread = kill_actor_when(complete(run_dir, 1), stopped, signal.SIGSTOP)
    code = cli(run_dir, "run.total_steps=3", "run.resume=auto", "run.max_restarts=1", "run.call_timeout_s=30")
    thread.join(timeout=5)
    out = capsys.readouterr().out
    assert stopped["pids"] and code == 0
    assert "actor ranks [0] timed out after 30s in" in out and "(hung?)" in out and "restart 1/1" in out
    assert "resumed from" in out and "step-000001" in out
    assert steps_logged(run_dir) == [1, 2, 3]
    assert complete(run_dir, 3).exists()
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in stopped["pids"])  # the stopped process was killed with its roles


# ------------------------------------------------------------------ killed mid-checkpoint
def test_run_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(ray_session, tiny, tmp_path, capsys):
    run_dir = tmp_path / "run"
    staging = run_dir / "checkpoints" / "step-000002.tmp"
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local Ray: the whole run dies with it
    proc = subprocess.Popen([sys.executable, "-m", "rlhf.cli", "train", RECIPE, *SHORT, f"run.run_dir={run_dir}",
                             "run.total_steps=3"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(staging, poll=0.002)
        tree = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for child in tree:  # Ray daemons may have left the process group
            try:
                child.kill()
            except psutil.Error:
                pass
        assert not complete(run_dir, 2).exists(), "killed too late: the checkpoint was already complete"
    finally:
        proc.kill()
        proc.wait()
    assert complete(run_dir, 1).exists()
    assert 2 in steps_logged(run_dir)  # step 2 was logged before its checkpoint began
    assert timeline_steps(run_dir) == [1]  # the killed run's trace.json holds its finished step

    code = cli(run_dir, "run.total_steps=3", "run.resume=auto")
    out = capsys.readouterr().out
    assert code == 0
    assert "resumed from" in out and "step-000001" in out
    assert steps_logged(run_dir) == [1, 2, 3]
    rolled_back = [json.loads(line)["step"] for line in (run_dir / "metrics.rolled_back.jsonl").read_text().splitlines()]
    assert rolled_back == [2]
    assert complete(run_dir, 3).exists() and not staging.exists()
    assert timeline_steps(run_dir) == [1, 2, 3]


# ------------------------------------------------------------------ NaN / Inf
def test_nan_batches_are_skipped_then_the_run_stops_with_a_diagnostic(ray_session, tiny, tmp_path, capsys,
                                                                         monkeypatch):
    from rlhf.controller import PPOTrainer

    real = PPOTrainer._advantages

    def poisoned(self, batch):  # steps 2 and 3 get NaN advantages
        batch, metrics = real(self, batch)
        if self.step_index >= 1:
            batch = batch.replace(advantages=torch.full_like(batch.advantages, float("nan")))
        return batch, metrics

    monkeypatch.setattr(PPOTrainer, "_advantages", poisoned)
    run_dir = tmp_path / "run"
    code = cli(run_dir, "run.total_steps=4", "run.max_bad_steps=1")
    captured = capsys.readouterr()
    assert code == 1
    assert "advantages: " in captured.err and "NaN" in captured.err and "run.max_bad_steps=1" in captured.err
    assert "bad step 1 of at most 1" in captured.out
    records = {r["step"]: r for r in read_metrics(run_dir)}
    assert sorted(records) == [1, 2]
    assert records[1]["train/skipped"] == 0 and records[2]["train/skipped"] == 1
    assert records[2]["train/bad_steps"] == 1
    assert "actor/pg_loss" not in records[2]  # no update ran on the poisoned batch
    assert complete(run_dir, 2).exists()  # the skipped step still checkpoints (weights untouched)


TRAIN_PAIRS = [("12+34=", "46"), ("5+6=", "11"), ("70+29=", "99"), ("3+4=", "7")]


@pytest.mark.parametrize("stage,dtype", [(0, "fp32"), (2, "bf16"), (3, "fp32")])
def test_nan_gradients_skip_the_optimizer_step_and_checkpoints_load_weights_only(
        ray_session, tiny, tmp_path, stage, dtype):
    """The trainer's own guard: NaN advantages reach the loss; the optimizer step is
    skipped and reported; the weights are untouched. Then the DeepSpeed checkpoint of
    this set-up round-trips through torch.load(weights_only=True)."""
    from transformers import AutoTokenizer

    from rlhf.config.schema import AlgorithmSection, TrainerSection, TrainSection
    from workers.actor import ActorWorker
    from workers.group import WorkerGroup

    tok = AutoTokenizer.from_pretrained(tiny["policy"])
    batch = _batch(tok, TRAIN_PAIRS)
    group = WorkerGroup(ActorWorker, 1, num_cpus=0.25, name="actor", init_kwargs=dict(
        model_path=tiny["policy"], trainer_cfg=TrainerSection(zero_stage=stage, lr=1e-3, num_cpus=0.25),
        algo_cfg=AlgorithmSection(), train_cfg=TrainSection(mini_batch_size=4, micro_batch_size=2, ppo_epochs=1),
        seed=0, dtype=dtype))
    try:
        old = group.run_split("compute_logprobs", batch, temperature=1.0)
        before = group.run_all("full_weights")[0]
        nan_adv = torch.full_like(batch.response_mask, float("nan"))
        metrics = group.run_all("update", batch.replace(old_logprobs=old, advantages=nan_adv))[0]
        assert metrics["actor/skipped_steps"] == 1
        after = group.run_all("full_weights")[0]
        assert all(torch.equal(before[n], after[n]) for n in before)
        good = group.run_all("update", batch.replace(old_logprobs=old, advantages=batch.response_mask.clone()))[0]
        assert good["actor/skipped_steps"] == 0
        trained = group.run_all("full_weights")[0]
        assert all(torch.isfinite(t).all() for t in trained.values())
        assert any(not torch.equal(before[n], trained[n]) for n in before)

        group.run_all("save", str(tmp_path / "ckpt"))
        group.run_all("update", batch.replace(old_logprobs=old, advantages=batch.response_mask.clone()))
        group.run_all("load", str(tmp_path / "ckpt"))  # raises if a file holds a non-allow-listed object
        restored = group.run_all("full_weights")[0]
        assert all(torch.equal(trained[n], restored[n]) for n in trained)
    finally:
        group.kill()


def _batch(tok, pairs):
    from rlhf.generation import build_batch

    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p, _ in pairs]
    responses = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for _, r in pairs]
    logprobs = [[0.0] * len(r) for r in responses]
    return build_batch(prompts, responses, logprobs, torch.arange(len(pairs)), torch.zeros(len(pairs)),
                       max(map(len, responses)) + 1, tok.pad_token_id)

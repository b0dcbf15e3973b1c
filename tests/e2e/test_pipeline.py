"""End to end: the real pipeline (Ray, vLLM, DeepSpeed, rewards) for a few steps.

Shares the session's Ray. Each run uses tiny batch sizes so the whole module stays
within a few minutes on 2 cores.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.config import load_config
from rlhf.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "rewards" / "fixtures"
SMALL = ["train.prompts_per_step=8", "train.mini_batch_size=32", "train.micro_batch_size=16",
         "data.eval_size=16", "run.log_samples_every=0", "run.plots=true"]

pytestmark = pytest.mark.integration


def run(tmp_path, recipe, *overrides, name="e2e"):
    from rlhf.controller import PPOTrainer
    from rlhf.stage_run import run_to_end

    cfg = load_config(ROOT / "recipes" / recipe, [*SMALL, f"run.output_dir={tmp_path}", f"run.name={name}",
                                                   *overrides])
    return run_to_end(PPOTrainer(cfg)).run_dir


def test_ppo_tiny_runs_end_to_end(ray_session, tiny, tmp_path):
    run_dir = run(tmp_path, "ppo_tiny.yaml", "run.total_steps=2", "run.save_every=1", "run.eval_every=1")
    records = read_metrics(run_dir)
    steps = [r for r in records if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("rollout/reward_mean", "rollout/response_length", "actor/pg_loss", "actor/pg_clipfrac",
                "actor/approx_kl", "actor/entropy", "critic/vf_loss", "critic/explained_var", "kl/coef",
                "kl/mean", "timing/generate", "perf/tokens_per_s", "sync/seconds", "sync/bytes",
                "sync/GBps", "rollout/logprob_diff_mean", "rollout/logprob_diff_max", "eval/reward_mean"):
        assert steps[-1].get(key) is not None, key
    # rollout (vLLM, bf16) and trainer log-probs agree: the weight sync is live
    assert steps[-1]["rollout/logprob_diff_mean"] < 0.05
    assert steps[-1]["rollout/weight_version"] == 1.0
    assert 0.5 < steps[-1]["perf/peak_pipeline_rss_gb"] < 16  # reported, well inside 24 GiB
    assert (run_dir / "config.yaml").exists() and (run_dir / "curves.png").exists()
    from rlhf.plots import PANELS

    for key in (key for _, keys in PANELS for key in keys):  # every plotted curve is one the run writes
        assert any(r.get(key) is not None for r in records), key
    assert (run_dir / "checkpoints" / "step-000002" / "COMPLETE").exists()
    final = run_dir / "final_policy"
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(final)
    # cleanup shut the roles down in order: no weight-sync file of a dead sender is left
    from workers.device import shared_memory_dir
    from workers.weight_sync import SHM_PREFIX, _pid_alive

    senders = {int(f.name[len(SHM_PREFIX):].split("-")[0]) for f in Path(shared_memory_dir()).glob(SHM_PREFIX + "*")}
    assert all(_pid_alive(pid) for pid in senders)
    check_timeline(run_dir)


def check_timeline(run_dir):
    """trace.json of the PPO run above: a track per role and rank, every phase in every
    step where it belongs, worker spans inside the controller's span of their phase."""
    import timeline_checks as tc
    from rlhf.cli import main

    trace = tc.load(run_dir)
    assert list(trace.windows) == [1, 2]
    controller = {"generate", "reward", "logprobs_values", "advantages", "update", "sync", "eval", "checkpoint"}
    per_track = {"controller": controller, "rollout engine 0": {"generate", "sync", "eval"},
                 "actor rank 0": {"logprobs", "update", "sync", "checkpoint"},
                 "critic rank 0": {"values", "update", "checkpoint"}, "reference rank 0": {"logprobs"}}
    for track, phases in per_track.items():
        assert all(found == phases for found in tc.phases_by_step(trace, track).values()), (track, phases)
    tc.assert_inside_driver_phases(trace, [t for t in trace.tracks if t != "controller"])
    out = run_dir / "last2.png"
    assert main(["timeline", str(run_dir), "--last", "2", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and (run_dir / "timeline.png").exists()  # rlhf plot drew it too


def test_critic_warmup_trains_only_the_critic(ray_session, tiny, tmp_path):
    """train.critic_warmup_steps=1: step 1 updates the critic only (no actor update, no
    weight sync), step 2 is a full PPO step."""
    run_dir = run(tmp_path, "ppo_tiny.yaml", "run.total_steps=2", "train.critic_warmup_steps=1",
                  "run.export_hf=false", "run.plots=false", "data.eval_path=null")
    first, second = [r for r in read_metrics(run_dir) if r["step"] > 0]
    assert first["train/critic_warmup"] == 1.0 and second["train/critic_warmup"] == 0.0
    assert first["critic/vf_loss"] is not None and first.get("actor/pg_loss") is None
    assert first.get("sync/seconds") is None  # nothing to sync: the policy did not change
    # step 2 sampled from the initial weights, which the trainer still held: no drift
    assert second["rollout/weight_version"] == 0.0 and second["rollout/logprob_diff_mean"] < 0.05
    assert second["actor/pg_loss"] is not None and second["sync/seconds"] is not None


def test_grpo_with_verl_and_openrlhf_reward_files(ray_session, tiny, tmp_path):
    rewards = [f"reward.functions=[{{name: verl, fn: '{FIXTURES / 'verl_reward.py'}:compute_score'}},"
               f"{{name: openrlhf, fn: '{FIXTURES / 'openrlhf_reward.py'}:reward_func', weight: 0.5}}]"]
    # two vLLM engines share the batch; one mini-batch per step, so the update scores
    # the old log-probs itself (train.old_logprobs_from_update)
    run_dir = run(tmp_path, "grpo_tiny.yaml", "run.total_steps=1", "run.export_hf=false",
                  "rollout.num_workers=2", "rollout.num_cpus=0.25", "train.mini_batch_size=64", *rewards)
    step = [r for r in read_metrics(run_dir) if r["step"] == 1][0]
    assert step["rollout/logprob_diff_mean"] < 0.05  # the update's log-probs vs vLLM's
    assert step["actor/grad_norm"] > 0  # the fused update had a signal (and really ran)
    assert abs(step["kl/mean"]) < 0.05  # KL(policy || reference) at step 1: the same weights
    assert step["reward/verl"] is not None and step["reward/openrlhf"] is not None
    assert step.get("critic/vf_loss") is None  # GRPO: no critic


def test_broken_config_fails_before_workers_start(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", "train", str(ROOT / "recipes" / "ppo_tiny.yaml"),
                           "train.mini_batch_size=48", f"run.output_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "train.mini_batch_size" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing started, no run directory


def test_resume_continues_the_uninterrupted_run(ray_session, tiny, tmp_path):
    """Stop after the step-2 checkpoint, resume to step 4: steps 3-4 equal the
    uninterrupted run's (same data order, same sampling seeds, same weights, and the
    same mini-batch reshuffle in the second PPO epoch)."""
    common = ["run.save_every=2", "run.export_hf=false", "run.plots=false", "data.eval_path=null",
              "train.mini_batch_size=16", "train.micro_batch_size=16", "train.ppo_epochs=2"]
    full = run(tmp_path / "a", "ppo_tiny.yaml", "run.total_steps=4", *common)
    part_dir = tmp_path / "b" / "run"
    run(tmp_path / "b", "ppo_tiny.yaml", "run.total_steps=2", f"run.run_dir={part_dir}", *common)
    run(tmp_path / "b", "ppo_tiny.yaml", "run.total_steps=4", f"run.run_dir={part_dir}", "run.resume=auto", *common)
    a, b = read_metrics(full), read_metrics(part_dir)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a[2:], b[2:]):
        assert rb["rollout/reward_mean"] == pytest.approx(ra["rollout/reward_mean"], abs=1e-6)
        assert rb["rollout/weight_version"] == ra["rollout/weight_version"]
        for key in ("actor/pg_loss", "critic/vf_loss", "kl/mean"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-3, abs=1e-5), key


@pytest.mark.parametrize("recipe", ["ppo_gsm8k_qwen2.5_0.5b.yaml", "grpo_gsm8k_qwen2.5_0.5b.yaml"])
def test_gpu_recipes_dry_run_with_tiny_model(ray_session, tiny, tmp_path, recipe):
    """GPU-scale recipes: their algorithm settings run for 2 steps with the tiny model,
    a tiny GSM8K sample and CPU-sized resources substituted."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_gsm8k.py"), "--out", str(tmp_path / "gsm8k"),
                    "--test-size", "16"], check=True, capture_output=True)
    cpu = ["model.policy=tiny:policy", "model.dtype=auto", "data.template=plain", "data.max_prompt_tokens=512",
           f"data.train_path={tmp_path / 'gsm8k' / 'train.jsonl'}", f"data.eval_path={tmp_path / 'gsm8k' / 'test.jsonl'}",
           "data.eval_size=8", "rollout.max_new_tokens=8", "rollout.num_gpus=0", "rollout.num_cpus=0.5",
           "rollout.memory_fraction=0.1", "actor.num_gpus=0", "actor.num_cpus=0.25", "critic.num_gpus=0",
           "critic.num_cpus=0.25", "reference.num_gpus=0", "actor.grad_checkpointing=false",
           "critic.grad_checkpointing=false", "train.prompts_per_step=8", "train.mini_batch_size=16",
           "train.micro_batch_size=8", "rollout.n=2", "run.total_steps=2", "run.export_hf=false"]
    run_dir = run(tmp_path, recipe, *cpu)
    steps = [r for r in read_metrics(run_dir) if r["step"] > 0]
    assert [r["step"] for r in steps] == [1, 2]
    assert steps[-1]["reward/gsm8k"] is not None


def test_zero3_trainer_syncs_through_process_group(ray_session, tiny, tmp_path):
    """Resharding path 2: ZeRO-3 shards gathered in groups, broadcast over a gloo group
    to the vLLM worker; rollout and trainer log-probs still agree after 2 syncs."""
    run_dir = run(tmp_path, "grpo_tiny.yaml", "run.total_steps=2", "actor.zero_stage=3",
                  "actor.num_workers=2", "actor.num_cpus=0.25", "sync.transport=process_group",
                  "train.mini_batch_size=64",  # on-policy: the old log-probs come back from 2 ranks
                  "sync.bucket_mb=1", "run.export_hf=false", "data.eval_path=null")
    steps = [r for r in read_metrics(run_dir) if r["step"] > 0]
    assert steps[-1]["rollout/weight_version"] == 1.0
    assert steps[-1]["sync/bytes"] > 1e6 and steps[-1]["sync/buckets"] >= 2
    assert steps[-1]["rollout/logprob_diff_mean"] < 0.05


def test_gspo_with_dapo_dynamic_sampling(ray_session, tiny, tmp_path):
    """GSPO's sequence ratio reaches the actor metrics; filtered rounds consume prompts and
    the checkpoint's sampler position counts every one of them (resume stays in step)."""
    from rlhf import checkpoint as ckpt

    run_dir = run(tmp_path, "grpo_tiny.yaml", "run.total_steps=2", "run.save_every=1", "run.export_hf=false",
                  "run.plots=false", "data.eval_path=null", "train.mini_batch_size=64", "algorithm.policy_loss=gspo",
                  "algorithm.clip_low=3e-4", "algorithm.clip_high=4e-4", "algorithm.filter_groups=true",
                  "algorithm.max_gen_batches=3")
    steps = [r for r in read_metrics(run_dir) if r["step"] >= 1]
    rounds = 0
    for step in steps:
        assert 1 <= step["rollout/gen_rounds"] <= 3
        assert 0 < step["rollout/groups_kept_frac"] <= 1
        # a step stops early only once it holds all 8 informative groups
        assert step["rollout/filter_cap_hit"] == float(step["rollout/informative_groups_frac"] < 1)
        assert step["rollout/gen_rounds"] == 3 or step["rollout/informative_groups_frac"] == 1
        assert step["actor/seq_ratio_mean"] == pytest.approx(1.0, abs=1e-3)  # on-policy: s_i = 1
        rounds += int(step["rollout/gen_rounds"])
    state = ckpt.read_state(ckpt.latest(run_dir))
    assert state["step"] == 2
    train_size = state["sampler"]["size"]
    consumed = state["sampler"]["epoch"] * train_size + state["sampler"]["cursor"]
    assert consumed == rounds * 8  # 8 prompts per round (train.prompts_per_step)

"""rollout.mode async end to end: up to max_staleness batches generate ahead while the
trainer trains, the weight sync does not collect them, the lag is bounded; resume is exact;
max_staleness 0 is the synchronous step, exactly."""
from pathlib import Path

import pytest

from rlhf.config import load_config
from rlhf.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
COMMON = ["run.save_every=2", "run.export_hf=false", "run.plots=false", "data.eval_path=null",
          "train.prompts_per_step=8", "train.mini_batch_size=64", "train.micro_batch_size=32"]
ASYNC = ["rollout.mode=async", "rollout.max_staleness=2", "algorithm.tis_cap=2.0"]
SAME = ("rollout/reward_mean", "rollout/weight_version", "actor/pg_loss", "kl/mean", "rollout/response_length")


def run(out: Path, *overrides, stop_after: int | None = None) -> Path:
    """A run; `stop_after`: interrupted (an exception) once that many steps are done."""
    from rlhf.controller import PPOTrainer
    from rlhf.stage_run import run_to_end

    class Interrupted(PPOTrainer):
        def step(self):
            if self.step_index == stop_after:
                raise KeyboardInterrupt
            return super().step()

    cfg = load_config(ROOT / "recipes" / "grpo_tiny.yaml", [*COMMON, f"run.output_dir={out}", *overrides])
    if stop_after is None:
        return run_to_end(PPOTrainer(cfg)).run_dir
    with pytest.raises(KeyboardInterrupt):
        run_to_end(Interrupted(cfg))


def test_async_at_staleness_zero_is_the_sync_step(ray_session, tiny, tmp_path):
    sync = read_metrics(run(tmp_path / "s", "run.total_steps=2"))
    zero = read_metrics(run(tmp_path / "z", "run.total_steps=2", "rollout.mode=async", "rollout.max_staleness=0"))
    for a, b in zip(sync, zero, strict=True):
        assert "async/staleness_mean" not in b
        for key in SAME:
            if key in a:
                assert b[key] == a[key], key


def test_async_runs_k_batches_ahead_with_bounded_lag_and_resumes_exactly(ray_session, tiny, tmp_path):
    full = read_metrics(run(tmp_path / "a", "run.total_steps=5", *ASYNC))
    part_dir = tmp_path / "b" / "run"
    run(tmp_path / "b", "run.total_steps=5", f"run.run_dir={part_dir}", *ASYNC, stop_after=2)
    buffer = part_dir / "checkpoints" / "step-000002"
    import json

    # steps 3 and 4's batches, generated during steps 1 and 2 by the initial weights
    assert [b["step"] for b in json.loads((buffer / "buffer.json").read_text())["batches"]] == [2, 3]
    resumed = read_metrics(run(tmp_path / "b", "run.total_steps=5", f"run.run_dir={part_dir}", "run.resume=auto",
                               *ASYNC))
    steps = [r for r in full if r["step"] > 0]
    # batch j launched at step j-2 (before that step's sync): version max(0, j-2); the trainer is at j
    assert [r["rollout/weight_version"] for r in steps] == [0.0, 0.0, 0.0, 1.0, 2.0]
    assert [r["async/staleness_mean"] for r in steps] == [0.0, 1.0, 2.0, 2.0, 2.0]
    for r in steps:
        assert r["async/staleness_max"] <= 2 and 0 < r["actor/is_weight_mean"] <= 2.0
        assert sum(r[f"async/staleness_{k}"] for k in range(3)) == pytest.approx(1.0)
    assert "timing/generate" in steps[0] and all("timing/generate" not in r for r in steps[1:])
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5]
    for ra, rb in zip(full[2:], resumed[2:]):
        assert rb["rollout/reward_mean"] == pytest.approx(ra["rollout/reward_mean"], abs=1e-6)
        assert rb["rollout/weight_version"] == ra["rollout/weight_version"]
        for key in ("actor/pg_loss", "kl/mean", "actor/is_weight_mean"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-3, abs=1e-5), key


def test_async_with_partial_resume_syncs_beside_the_generation(ray_session, tiny, tmp_path):
    """Agentic trajectories whose tool waits: with rollout.partial resume the weight sync goes
    through while batches are generating; the lag stays bounded by max_staleness."""
    env = ROOT / "scripts" / "bench" / "sleepy_tool_env.py"
    records = read_metrics(run(tmp_path / "r", "run.total_steps=4", "run.save_every=0", *ASYNC,
                               "rollout.partial=resume", f"rollout.agent.environment={env}:SleepyTool",
                               "rollout.agent.env_kwargs={latency_s: 3.0}", "rollout.agent.max_turns=2",
                               "rollout.agent.max_total_tokens=24", "rollout.agent.stop=[]", "reward.functions=[]"))
    steps = [r for r in records if r["step"] > 0]
    assert len(steps) == 4
    for r in steps:
        assert 0 <= r["async/staleness_max"] <= 2 and 0 <= r["async/resumed_frac"] <= 1
        assert r["sync/seconds"] < 1.0  # never waits for a tool (3 s) or a batch in flight
    # a batch takes >= 3 s (the tool) and two are launched ahead: the engine is busy at the
    # syncs, and trajectories in flight write their next turn under the new weights
    assert any(r["async/resumed_frac"] > 0 for r in steps)

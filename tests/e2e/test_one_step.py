"""rollout.mode one_step end to end: the next step's batch generates while this one
trains; samples are one weight version old, corrected by truncated IS; resume is exact."""
from pathlib import Path

import pytest

from rlhf.config import load_config
from rlhf.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
COMMON = ["rollout.mode=one_step", "algorithm.tis_cap=2.0", "run.save_every=2", "run.export_hf=false",
          "run.plots=false", "data.eval_path=null", "train.prompts_per_step=8", "train.mini_batch_size=64",
          "train.micro_batch_size=32"]


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


def test_one_step_off_policy_trains_on_last_steps_samples_and_resumes_exactly(ray_session, tiny, tmp_path):
    full_dir = run(tmp_path / "a", "run.total_steps=4")
    full = read_metrics(full_dir)
    part_dir = tmp_path / "b" / "run"
    run(tmp_path / "b", "run.total_steps=4", f"run.run_dir={part_dir}", stop_after=2)
    assert (part_dir / "checkpoints" / "step-000002" / "buffer.pt").exists()  # step 3's batch, generated in step 2
    resumed = read_metrics(run(tmp_path / "b", "run.total_steps=4", f"run.run_dir={part_dir}", "run.resume=auto"))
    steps = [r for r in full if r["step"] > 0]
    # step 1 generates its own batch with the initial weights; later ones were generated
    # during the previous step, one weight version behind the policy that trains on them
    assert [r["async/staleness_mean"] for r in steps] == [0.0, 1.0, 1.0, 1.0]
    assert [r["rollout/weight_version"] for r in steps] == [0.0, 0.0, 1.0, 2.0]
    for r in steps:
        assert r["async/staleness_max"] <= 1 and 0 < r["actor/is_weight_mean"] <= 2.0
        assert r["timing/wait_rollout"] >= 0 if r["step"] < 4 else True
    assert "timing/generate" in steps[0] and "timing/generate" not in steps[1]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for ra, rb in zip(full[2:], resumed[2:]):
        assert rb["rollout/reward_mean"] == pytest.approx(ra["rollout/reward_mean"], abs=1e-6)
        assert rb["rollout/weight_version"] == ra["rollout/weight_version"]
        for key in ("actor/pg_loss", "kl/mean", "actor/is_weight_mean"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-3, abs=1e-5), key
    check_timeline(full_dir, part_dir)


def check_timeline(full_dir: Path, resumed_dir: Path) -> None:
    """trace.json: the engine generates the next batch while the actor trains on this one;
    the resumed run's trace continues the interrupted one's."""
    import timeline_checks as tc

    trace = tc.load(full_dir)
    assert list(trace.windows) == [1, 2, 3, 4]
    phases = tc.phases_by_step(trace, "controller")
    assert "generate" in phases[1] and all("generate" not in phases[s] for s in (2, 3, 4))
    assert all("wait_rollout" in phases[s] for s in (1, 2, 3)) and "wait_rollout" not in phases[4]
    generate = tc.intervals(trace, "rollout engine 0", "generate")
    training = [iv for track in ("actor rank 0", "reference rank 0") for phase in ("logprobs", "update")
                for iv in tc.intervals(trace, track, phase)]
    for step in (1, 2, 3):  # each launches the next step's batch, which decodes while the trainers work
        ahead = tc.intervals(trace, "rollout engine 0", "generate", trace.windows[step])[-1:]
        assert tc.overlap_s(ahead, training) > 0, step
    assert tc.overlap_s(generate, tc.intervals(trace, "actor rank 0", "update")) > 0
    resumed = tc.load(resumed_dir)
    assert list(resumed.windows) == [1, 2, 3, 4]
    assert resumed.windows[2][1] < resumed.windows[3][0]  # steps 1-2 from the interrupted attempt

"""`rlhf plan` against a real run: the tiny GRPO recipe for 2 steps on this CPU.

The plan's peak memory per role (PSS, as rlhf.metrics.memory_breakdown_gib measures it at
the run's peak) must be within 25% of the run's, and its phase times within 2x of the
last step's timing/*. The rates are measured again right after the run: on a machine
shared with other jobs the contention, and so every time, moves within minutes.
"""
import json
from pathlib import Path

import pytest

from rlhf.config import load_config
from rlhf.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

OVERRIDES = ["run.total_steps=2", "run.eval_every=0", "data.eval_path=null", "run.log_samples_every=0",
             "run.plots=false", "run.export_hf=false"]
# Ray actor class (memory.json) -> the plan's role rank
ROLE_PROCESSES = {"ActorWorker": "actor/0", "ReferenceWorker": "reference/0", "RolloutWorker": "rollout/0"}
# the plan's phase -> the run's timing key
PHASE_METRICS = {"generate": "timing/generate", "logprobs_values": "timing/logprobs_values",
                 "update": "timing/update"}


def test_plan_predicts_the_tiny_grpo_run(ray_session, tiny, tmp_path):
    from rlhf.controller import PPOTrainer
    from rlhf.plan import local_roof, make_plan
    from rlhf.plan.build import Lengths, model_shapes
    from rlhf.plan.cluster import local_cluster
    from rlhf.stage_run import run_to_end

    cfg = load_config(ROOT / "recipes" / "grpo_tiny.yaml", [*OVERRIDES, f"run.output_dir={tmp_path}"])
    shapes = model_shapes(cfg)
    # the tiny task's prompts ("37+45=") are 6-7 tokens of the 8 budgeted; responses use the budget
    lengths = Lengths(cfg.data.max_prompt_tokens, cfg.response_budget)
    plan = make_plan(cfg, local_cluster(), local_roof(cfg, shapes, lengths), lengths, shapes)
    assert plan.fits
    run_dir = run_to_end(PPOTrainer(cfg)).run_dir

    measured = json.loads((run_dir / "memory.json").read_text())["at_peak_pss_gib"]
    predicted = {k: v / 2**30 for k, v in plan.role_peaks().items()}
    report = []
    for process, role in ROLE_PROCESSES.items():
        report.append(f"{role}: plan {predicted[role]:.3f} GiB, run {measured[process]:.3f} GiB")
    for process, role in ROLE_PROCESSES.items():
        assert abs(predicted[role] / measured[process] - 1) <= 0.25, report

    last = read_metrics(run_dir)[-1]
    plan = make_plan(cfg, local_cluster(), local_roof(cfg, shapes, lengths), lengths, shapes)
    phases = {p.name: p.seconds for p in plan.phases}
    timing = [f"{name}: plan {phases[name]:.3f} s, run {last[key]:.3f} s" for name, key in PHASE_METRICS.items()]
    print("\n".join(report + timing + [plan.roof_source]))
    for name, key in PHASE_METRICS.items():
        assert 0.5 <= phases[name] / last[key] <= 2.0, timing

"""rlhf.overlap's schedule with stand-in engines: what runs ahead, what the sync waits
for, the staleness bound, and the buffer's checkpoint (pure logic, no Ray)."""
import pytest
import torch

from rlhf.batch import Batch
from rlhf.data import PromptSet
from rlhf.group_filter import SampledRound
from rlhf.overlap import RolloutOverlap


class Engine:
    """A stand-in rollout: a launched batch is sampled by the weights current at launch
    (a real engine runs calls in order: a sync queued behind a launch applies after it)."""

    def __init__(self):
        self.version, self.log = 0, []

    def launch(self, step):
        self.log.append(("launch", step, self.version))
        return step, self.version

    def collect(self, handle):
        step, version = handle
        self.log.append(("collect", step))
        return round_of(step, version)

    def generate(self, step):
        self.log.append(("generate", step, self.version))
        return round_of(step, self.version)


def round_of(step, version, size=4):
    batch = Batch(input_ids=torch.full((size, 3), step), attention_mask=torch.ones(size, 3, dtype=torch.long),
                  response_mask=torch.ones(size, 1), group_ids=torch.arange(size),
                  rollout_logprobs=torch.full((size, 1), -0.5), weight_version=torch.full((size,), version),
                  scores=torch.full((size,), float(step)))
    rows = PromptSet(prompt_ids=[[step]], prompts=[f"p{step}"], labels=[str(step)], columns={}, source="t",
                     dropped_too_long=0)
    return SampledRound(rows, batch, [f"t{step}"] * size, ["stop"] * size, {"reward/x": float(step)})


def run(mode, k, steps, engine=None, overlap=None, start=0):
    engine = engine or Engine()
    overlap = overlap or RolloutOverlap(mode, k, steps, launch=engine.launch, collect=engine.collect,
                                        generate=engine.generate)
    trained = []
    for step in range(start, steps):
        sampled = overlap.batch_for(step, engine.version)
        trained.append((int(sampled.batch.scores[0]), int(sampled.batch.weight_version[0]),
                        sampled.metrics["async/staleness_max"]))
        overlap.before_sync()
        engine.version += 1  # the weight sync
    return trained, engine, overlap


def test_async_keeps_k_batches_ahead_and_lags_exactly_k_in_steady_state():
    trained, engine, _ = run("async", 2, 6)
    assert [t[0] for t in trained] == list(range(6))
    # batch j was launched at step j-2 (version j-2); the first ones by the initial weights
    assert [t[1] for t in trained] == [0, 0, 0, 1, 2, 3]
    assert [t[2] for t in trained] == [0, 1, 2, 2, 2, 2]
    launches = [e for e in engine.log if e[0] == "launch"]
    assert launches == [("launch", 1, 0), ("launch", 2, 0), ("launch", 3, 1), ("launch", 4, 2), ("launch", 5, 3)]
    # the sync never collects: each batch is collected by the step that trains on it
    collects = [i for i, e in enumerate(engine.log) if e[0] == "collect"]
    assert [engine.log[i][1] for i in collects] == [1, 2, 3, 4, 5]


def test_one_step_collects_before_the_sync_and_lags_one():
    trained, engine, _ = run("one_step", 1, 4)
    assert [t[1:] for t in trained] == [(0, 0.0), (0, 1.0), (1, 1.0), (2, 1.0)]
    assert engine.log[:4] == [("generate", 0, 0), ("launch", 1, 0), ("collect", 1), ("launch", 2, 1)]


def test_sync_and_async_at_zero_generate_each_step_themselves():
    for mode in ("sync", "async"):
        overlap = RolloutOverlap(mode, 0, 3, launch=None, collect=None, generate=None)
        assert not overlap.enabled


@pytest.mark.parametrize("k", [1, 2, 3])
def test_staleness_never_exceeds_the_bound(k):
    trained, _, _ = run("async", k, 8)
    assert max(t[2] for t in trained) == k


def test_a_sample_over_the_bound_is_refused():
    engine = Engine()
    overlap = RolloutOverlap("async", 1, 4, launch=engine.launch, collect=engine.collect, generate=engine.generate)
    overlap.batch_for(0, 0)  # launches step 1 at version 0
    with pytest.raises(RuntimeError, match="2 weight versions behind.*rollout.max_staleness=1"):
        overlap.batch_for(1, 2)


def test_checkpoint_drains_in_flight_and_resume_trains_the_same_batches(tmp_path):
    full, _, _ = run("async", 2, 6)
    # interrupted after step 2 (3 steps done): checkpoint with two batches ahead
    engine = Engine()
    part, engine, overlap = run("async", 2, 3, engine=engine,
                                overlap=RolloutOverlap("async", 2, 6, launch=engine.launch, collect=engine.collect,
                                                       generate=engine.generate))
    assert overlap.buffer.in_flight == 2
    overlap.drain()
    overlap.save(tmp_path)
    assert (tmp_path / "buffer.pt").exists() and (tmp_path / "buffer.json").exists()
    resumed_engine = Engine()
    resumed_engine.version = engine.version
    resumed = RolloutOverlap("async", 2, 6, launch=resumed_engine.launch, collect=resumed_engine.collect,
                             generate=resumed_engine.generate)
    resumed.load(tmp_path, 3)
    rest, _, _ = run("async", 2, 6, engine=resumed_engine, overlap=resumed, start=3)
    assert part + rest == full
    assert not [e for e in resumed_engine.log if e[0] == "generate"]


def test_a_one_batch_checkpoint_of_the_earlier_format_loads(tmp_path):
    import dataclasses
    import json

    r = round_of(5, 4)
    torch.save({f.name: getattr(r.batch, f.name) for f in dataclasses.fields(r.batch)}, tmp_path / "buffer.pt")
    rows = {"prompt_ids": r.rows.prompt_ids, "prompts": r.rows.prompts, "labels": r.rows.labels,
            "columns": r.rows.columns, "source": r.rows.source}
    (tmp_path / "buffer.json").write_text(json.dumps({"rows": rows, "texts": r.texts, "finish": r.finish,
                                                      "metrics": r.metrics}))
    engine = Engine()
    overlap = RolloutOverlap("one_step", 1, 9, launch=engine.launch, collect=engine.collect, generate=engine.generate)
    overlap.load(tmp_path, 5)
    sampled = overlap.batch_for(5, 5)
    assert int(sampled.batch.scores[0]) == 5 and sampled.metrics["async/staleness_max"] == 1.0

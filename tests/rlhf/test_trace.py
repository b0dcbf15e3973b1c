"""The step timeline's pure logic (rlhf.trace): spans recorded by workers, events of a
step, the union/busy arithmetic, the file across a resume, the Gantt chart and the CLI."""
import json

import pytest

from rlhf.cli import main
from rlhf.trace import (
    TRACE_FILE,
    Trace,
    TraceRecorder,
    Traced,
    covered,
    idle_gaps,
    load_trace,
    merged,
    step_events,
    traced,
)


class Worker(Traced):
    @traced("update")
    def update(self, fail=False):
        if fail:
            raise RuntimeError("boom")
        return self.inner()

    @traced("logprobs")
    def inner(self):
        return 7


def test_traced_records_outermost_span_and_take_clears():
    w = Worker()
    assert w.update() == 7
    with pytest.raises(RuntimeError):
        w.update(fail=True)
    assert w.inner() == 7
    log = w.take_spans()
    assert [(phase, method) for phase, _, _, method in log["spans"]] == [
        ("update", "update"), ("update", "update"), ("logprobs", "inner")]  # nested inner() counted once
    assert all(start <= end for _, start, end, _ in log["spans"])
    assert log["pid"] > 0 and log["host"]
    assert w.take_spans()["spans"] == []


def test_union_coverage_and_gaps_closed_form():
    spans = [(0.0, 2.0), (1.0, 3.0), (5.0, 6.0), (5.5, 5.8)]
    assert merged(spans) == [(0.0, 3.0), (5.0, 6.0)]
    assert covered(spans, (0.0, 10.0)) == 4.0
    assert covered(spans, (2.0, 5.5)) == 1.5
    assert idle_gaps(spans, (-1.0, 10.0)) == [(-1.0, 0.0), (3.0, 5.0), (6.0, 10.0)]
    assert idle_gaps([], (1.0, 2.0)) == [(1.0, 2.0)]


def _log(*spans):
    return {"pid": 11, "host": "h", "spans": [list(s) for s in spans]}


def _step_data(step, t0):
    """A step of 10 s from t0: the controller generates 0-4, waits 4-5 (idle), updates 5-9;
    the engine generates 0-4; two actor ranks update 5-9 and 5-7; the engine's generate
    during the controller's eval (9-10) becomes `eval`."""
    driver = [("generate", t0, t0 + 4), ("wait_rollout", t0 + 4, t0 + 5), ("update", t0 + 5, t0 + 9),
              ("eval", t0 + 9, t0 + 10)]
    workers = [("rollout", 0, _log(("generate", t0, t0 + 4, "generate"), ("generate", t0 + 9.2, t0 + 9.8, "generate"))),
               ("actor", 0, _log(("update", t0 + 5, t0 + 9, "update"))),
               ("actor", 1, _log(("update", t0 + 5, t0 + 7, "update")))]
    return step, t0, t0 + 10, driver, workers


def test_step_events_tracks_phases_and_busy_fractions():
    events = step_events(*_step_data(1, 1000.0))
    rec = TraceRecorder.__new__(TraceRecorder)
    rec.tracks = {("controller", 0): {}, ("controller", 1): {}, ("rollout", 0): {}, ("actor", 0): {}, ("actor", 1): {}}
    data = {"traceEvents": rec._metadata() + events}
    trace = Trace(data)
    assert trace.tracks == ["controller", "rollout engine 0", "actor rank 0", "actor rank 1"]
    assert trace.windows == {1: (1000.0, 1010.0)}
    engine = [(e["name"], e["args"]["method"]) for e in trace.spans["rollout engine 0"]]
    assert engine == [("generate", "generate"), ("eval", "generate")]
    assert all(e["ph"] == "X" and e["args"]["step"] == 1 for e in events)
    busy = trace.busy_fractions()
    # controller: 10 s window, wait_rollout (1 s) is idle
    assert busy == pytest.approx({"controller": 0.9, "rollout engine 0": 0.46, "actor rank 0": 0.4,
                                  "actor rank 1": 0.2})
    meta = {(m["pid"], m.get("tid")): m["args"]["name"] for m in data["traceEvents"] if m["ph"] == "M"
            and m["name"] in ("process_name", "thread_name")}
    assert {meta[(e["pid"], None)] for e in events} == {"controller", "rollout", "actor"}
    assert len({(e["pid"], e["tid"]) for e in events}) == len({e["tid"] for e in events}) == 5  # tids unique


class FakeGroup:
    """Duck-typed WorkerGroup: call_all returns the ranks' logs, gather returns them."""

    def __init__(self, role, logs):
        self.role, self.logs, self.calls = role, logs, 0

    def call_all(self, method):
        assert method == "take_spans"
        self.calls += 1
        return self.logs

    def gather(self, refs):
        return refs


def _record(run_dir, steps, resume_step=None):
    rec = TraceRecorder(run_dir, resume_step=resume_step)
    for step in steps:
        _, t0, t1, driver, workers = _step_data(step, 1000.0 + 20 * step)
        groups = [FakeGroup(role, [log for r, _, log in workers if r == role]) for role in ("rollout", "actor")]
        rec.end_step(step, t0, driver, groups, ended=t1)
        assert [g.calls for g in groups] == [1, 1]  # one collection call per group per step
    return json.loads((run_dir / TRACE_FILE).read_text())


def test_recorder_rewrites_per_step_and_a_resume_continues(tmp_path):
    data = _record(tmp_path, [1, 2, 3])
    assert load_trace(tmp_path).windows == {1: (1020.0, 1030.0), 2: (1040.0, 1050.0), 3: (1060.0, 1070.0)}
    assert data["otherData"]["busy_fraction"]["actor rank 1"] == pytest.approx(0.2)  # idle between steps ignored
    assert {t["info"].get("os_pid") for t in data["otherData"]["tracks"]} >= {11}
    # resumed from step 2's checkpoint: step 3 of the first attempt is kept, marked rolled back
    data = _record(tmp_path, [3, 4], resume_step=2)
    steps = [e["args"]["step"] for e in data["traceEvents"] if e["ph"] == "X" and e["name"].startswith("step ")]
    assert steps == [1, 2, 3, 3, 4]
    rolled = [e for e in data["traceEvents"] if e.get("args", {}).get("rolled_back")]
    assert rolled and {e["args"]["step"] for e in rolled} == {3}
    trace = load_trace(tmp_path)
    assert list(trace.windows) == [1, 2, 3, 4]
    assert trace.windows[3][0] == 1000.0 + 60  # the redone step 3, not the rolled-back one
    assert sum(e["args"]["step"] == 3 for e in trace.spans["actor rank 0"]) == 1
    # summed step by step across the two attempts = recomputed from the file
    assert data["otherData"]["busy_fraction"] == pytest.approx(trace.busy_fractions())
    assert data["otherData"]["busy_fraction"]["rollout engine 0"] == pytest.approx(0.46)


def test_a_dead_rank_loses_only_its_spans_of_the_step(tmp_path):
    class Dead(FakeGroup):
        def gather(self, refs):
            raise RuntimeError("actor rank 0 died in take_spans")

    _, t0, t1, driver, workers = _step_data(1, 1000.0)
    with pytest.raises(RuntimeError, match="died"):
        TraceRecorder(tmp_path).end_step(1, t0, driver, [Dead("actor", [])], ended=t1)
    trace = load_trace(tmp_path)
    assert trace.windows == {1: (1000.0, 1010.0)} and trace.tracks == ["controller"]


def test_timeline_png_and_cli(tmp_path, capsys):
    _record(tmp_path, [1, 2, 3])
    out = tmp_path / "t.png"
    assert main(["timeline", str(tmp_path), "--last", "2", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert main(["timeline", str(tmp_path)]) == 0
    assert (tmp_path / "timeline.png").exists()


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"), ("no_trace", "no trace.json"), ("bad_json", "not a trace"),
    ("last0", "--last must be at least 1")])
def test_timeline_bad_input_is_one_line_exit_2(tmp_path, capsys, case, message):
    run_dir = tmp_path / "run"
    args = ["timeline", str(run_dir)]
    if case != "missing":
        run_dir.mkdir()
    if case == "bad_json":
        (run_dir / TRACE_FILE).write_text("{not json")
    if case == "last0":
        _record(run_dir, [1])
        args += ["--last", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rlhf: error:") and message in err and "\n" not in err

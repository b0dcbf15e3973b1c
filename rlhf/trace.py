"""The step timeline: `trace.json` in the run directory, in Chrome's trace event format
(open it in https://ui.perfetto.dev or chrome://tracing; `rlhf timeline RUN_DIR` draws it).

One track per role and rank: the controller (the driver's phases, from its PhaseTimer),
every rollout engine, every actor, critic, reference and reward-model rank. Each track
holds the spans in which that process worked, named by phase (generate, reward,
logprobs, values, advantages, update, sync, checkpoint, eval; wait_rollout on the
controller in rollout.mode one_step); the gaps between them are its idle time, and
`busy_fractions` measures them over the steps' windows (the controller's `steps` track).

Spans come from where the work runs: a worker method decorated `@traced("update")`
records its own wall-clock span; the controller collects them once per step with one
`take_spans` call per rank (`collect`), and `TraceRecorder.end_step` rewrites the file,
so an interrupted run keeps every finished step and a resumed one continues the file.
Clocks: `time.time()` in every process, so tracks on one node line up exactly; across
nodes they are off by the nodes' clock skew (NTP: typically a few ms).

Pure Python (no ray, no torch): workers and the controller both import it.
"""
from __future__ import annotations

import bisect
import functools
import json
import os
import socket
import time
from collections import deque
from pathlib import Path

TRACE_FILE = "trace.json"
MAX_SPANS = 10_000  # a worker nobody collects from (sft/rm stages) keeps only its latest spans
# the controller's phases in which it waits for others rather than works
IDLE_PHASES = frozenset({"wait_rollout"})
# controller phases whose name a worker's span inside them takes (the engine's `generate`
# during an evaluation is the evaluation)
CONTEXT_PHASES = ("eval",)
CONTROLLER, STEPS = "controller", "steps"
# Chrome trace "processes": one per role, in this order on screen; threads are ranks
ROLE_ORDER = (CONTROLLER, "rollout", "actor", "critic", "reference", "reward_model")


# ==================================================================== worker side
def traced(phase: str):
    """Record each call of the decorated method as a span of `phase` on this process's
    track (nested traced calls count once, as the outermost)."""
    def wrap(method):
        @functools.wraps(method)
        def run(self, *args, **kwargs):
            log = _span_log(self)
            if log["depth"]:
                return method(self, *args, **kwargs)
            log["depth"] += 1
            start = time.time()
            try:
                return method(self, *args, **kwargs)
            finally:
                log["depth"] -= 1
                log["spans"].append((phase, start, time.time(), method.__name__))
        return run
    return wrap


def _span_log(worker) -> dict:
    log = worker.__dict__.get("_trace_log")
    if log is None:
        log = worker.__dict__["_trace_log"] = {"depth": 0, "spans": deque(maxlen=MAX_SPANS)}
    return log


class Traced:
    """Mixin of a Ray worker class whose methods are `@traced`: the collection verb."""

    def take_spans(self) -> dict:
        """The spans recorded since the last call, [phase, start_s, end_s, method] each,
        with this process's id and host."""
        log = _span_log(self)
        spans = [list(s) for s in log["spans"]]
        log["spans"].clear()
        return {"pid": os.getpid(), "host": socket.gethostname(), "spans": spans}


def collect(groups) -> list[tuple[str, int, dict]]:
    """(role, rank, `take_spans()`) of every rank of the worker groups: one call per rank,
    all in flight together (groups: `workers.group.WorkerGroup`s, or anything with
    `role`, `call_all` and `gather`)."""
    calls = [(group, group.call_all("take_spans")) for group in groups]
    return [(group.role, rank, log) for group, refs in calls for rank, log in enumerate(group.gather(refs))]


# ==================================================================== tracks and spans
def track_name(role: str, rank: int) -> str:
    if role == CONTROLLER:
        return CONTROLLER if rank == 0 else STEPS
    return f"rollout engine {rank}" if role == "rollout" else f"{role} rank {rank}"


def role_pid(role: str) -> int:
    """The Chrome trace `pid` of a role (1-based, fixed order; unknown roles after)."""
    return ROLE_ORDER.index(role) + 1 if role in ROLE_ORDER else len(ROLE_ORDER) + 1


def role_tid(role: str, rank: int) -> int:
    """The Chrome trace `tid` of a rank: unique across roles (Perfetto keys threads by tid)."""
    return role_pid(role) * 1000 + rank


def span_event(phase: str, start: float, end: float, role: str, rank: int, step: int, **args) -> dict:
    """A Chrome trace complete event ("X"), times in microseconds since the epoch."""
    return {"name": phase, "cat": role, "ph": "X", "ts": round(start * 1e6), "dur": max(round((end - start) * 1e6), 0),
            "pid": role_pid(role), "tid": role_tid(role, rank), "args": {"step": step, **args}}


def step_events(step: int, began: float, ended: float, driver_spans, worker_logs) -> list[dict]:
    """The events of one step: its window on the `steps` track, the controller's phases
    (driver_spans: (phase, start_s, end_s)) and every rank's spans (worker_logs: `collect`'s
    tuples). A worker span lying in a CONTEXT_PHASES span of the controller takes its name."""
    events = [span_event(f"step {step}", began, ended, CONTROLLER, 1, step)]
    events += [span_event(phase, start, end, CONTROLLER, 0, step) for phase, start, end in driver_spans]
    contexts = [(p, s, e) for p, s, e in driver_spans if p in CONTEXT_PHASES]
    for role, rank, log in worker_logs:
        for phase, start, end, method in log["spans"]:
            middle = (start + end) / 2
            inside = next((p for p, s, e in contexts if s <= middle <= e), None)
            events.append(span_event(inside or phase, start, end, role, rank, step, method=method))
    return events


def merged(intervals) -> list[tuple[float, float]]:
    """The union of (start, end) intervals, as sorted disjoint intervals."""
    out: list[list[float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


def covered(intervals, window: tuple[float, float]) -> float:
    """Length of the union of `intervals` inside `window`."""
    return covered_in(intervals, [window])


def covered_in(intervals, windows) -> float:
    """Length of the union of `intervals` inside each of `windows`, summed (one merge and
    a bisection per window: a long run's trace has thousands of both)."""
    spans = merged(intervals)
    starts = [s for s, _ in spans]
    total = 0.0
    for lo, hi in windows:
        i = max(bisect.bisect_right(starts, lo) - 1, 0)
        while i < len(spans) and spans[i][0] < hi:
            total += max(0.0, min(spans[i][1], hi) - max(spans[i][0], lo))
            i += 1
    return total


def idle_gaps(intervals, window: tuple[float, float]) -> list[tuple[float, float]]:
    """The parts of `window` no interval covers."""
    gaps, cursor = [], window[0]
    for s, e in merged(intervals):
        if s > cursor and cursor < window[1]:
            gaps.append((cursor, min(s, window[1])))
        cursor = max(cursor, e)
    if cursor < window[1]:
        gaps.append((cursor, window[1]))
    return gaps


# ==================================================================== reading a trace
class Trace:
    """A loaded trace.json: step windows, and the busy intervals of each track."""

    def __init__(self, data: dict):
        events = data.get("traceEvents", [])
        names = {}
        for e in events:
            if e.get("ph") == "M" and e.get("name") == "thread_name":
                names[(e["pid"], e["tid"])] = e["args"]["name"]
        live = [e for e in events if e.get("ph") == "X" and not e.get("args", {}).get("rolled_back")]
        steps_key = (role_pid(CONTROLLER), role_tid(CONTROLLER, 1))
        windows: dict[int, tuple[float, float]] = {}
        self.spans: dict[str, list[dict]] = {}  # track -> its events
        for e in live:
            key = (e["pid"], e["tid"])
            if key == steps_key:
                windows[e["args"]["step"]] = (e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6)
            else:
                self.spans.setdefault(names.get(key, f"pid {key[0]} tid {key[1]}"), []).append(e)
        self.windows = dict(sorted(windows.items()))
        order = {name: key for key, name in names.items()}
        self.tracks = sorted(self.spans, key=lambda t: order.get(t, (99, 0)))

    def busy(self, track: str) -> list[tuple[float, float]]:
        """The track's working intervals (seconds since the epoch)."""
        return [(e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6) for e in self.spans[track]
                if not (track == CONTROLLER and e["name"] in IDLE_PHASES)]

    def busy_fractions(self, steps: list[int] | None = None) -> dict[str, float]:
        """Track -> the fraction of the given steps' windows (default: all) it was busy."""
        windows = [self.windows[s] for s in (self.windows if steps is None else steps)]
        total = sum(hi - lo for lo, hi in windows)
        return {track: covered_in(self.busy(track), windows) / total if total else 0.0 for track in self.tracks}


def load_trace(run_dir: str | Path) -> Trace:
    """The run's trace; FileNotFoundError / ValueError naming the file when it cannot be read."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    path = run_dir / TRACE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {TRACE_FILE} in {run_dir} (PPO-family runs write one per step)")
    try:
        trace = Trace(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: not a trace written by rlhf ({type(err).__name__}: {err})") from None
    if not trace.windows:
        raise ValueError(f"{path}: no finished step in the trace")
    return trace


# ==================================================================== the controller's recorder
class TraceRecorder:
    """Builds trace.json step by step. On resume from step k (`resume_step`), the file's
    events of later steps stay but are marked rolled back (that work was redone), like
    metrics.jsonl's lines (rlhf.metrics.MetricsLogger). Each event is serialised once and
    busy times are summed as steps end, so a step's rewrite costs little more than the
    file's bytes (~3.5 MB after 1000 steps of a 4-rank run)."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.path = Path(run_dir) / TRACE_FILE
        self.lines: list[str] = []  # the X events, JSON-encoded
        self.tracks: dict[tuple[str, int], dict] = {(CONTROLLER, 0): {}, (CONTROLLER, 1): {}}
        self.busy_s: dict[str, float] = {}  # track -> busy seconds inside the step windows
        self.window_s = 0.0
        if self.path.exists():
            self._load(resume_step)

    def _load(self, resume_step: int | None) -> None:
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError:  # not ours (writes are atomic): keep it aside, start afresh
            self.path.rename(self.path.with_suffix(".torn.json"))
            return
        self.tracks.update({tuple(t["key"]): t["info"] for t in data.get("otherData", {}).get("tracks", [])})
        events = [e for e in data.get("traceEvents", []) if e.get("ph") == "X"]
        for e in events:
            if resume_step is not None and e["args"].get("step", 0) > resume_step:
                e["args"]["rolled_back"] = True
        self.lines = [json.dumps(e) for e in events]
        trace = Trace(data)  # the kept steps' busy time
        windows = list(trace.windows.values())
        self.window_s = sum(hi - lo for lo, hi in windows)
        self.busy_s = {track: covered_in(trace.busy(track), windows) for track in trace.tracks}

    def end_step(self, step: int, began: float, driver_spans, groups, ended: float | None = None) -> None:
        """Add step `step` (its window: `began` to `ended`, default now): the controller's
        spans and those collected from every rank of `groups`, then rewrite the file. A rank
        that died since (its step is checkpointed: a restart resumes after it) loses only the
        workers' spans of the step: its window and the controller's spans are still written."""
        ended = time.time() if ended is None else ended
        logs = []
        try:
            logs = collect(groups)
        finally:
            self._add(step, began, ended, driver_spans, logs)

    def _add(self, step: int, began: float, ended: float, driver_spans, logs) -> None:
        for role, rank, log in logs:
            self.tracks[(role, rank)] = {"host": log["host"], "os_pid": log["pid"]}
        self.tracks[(CONTROLLER, 0)] = {"host": socket.gethostname(), "os_pid": os.getpid()}
        events = step_events(step, began, ended, driver_spans, logs)
        self.lines += [json.dumps(e) for e in events]
        trace = Trace({"traceEvents": self._metadata() + events})
        self.window_s += ended - began
        for track in trace.tracks:
            self.busy_s[track] = self.busy_s.get(track, 0.0) + covered(trace.busy(track), (began, ended))
        self.write()

    def _metadata(self) -> list[dict]:
        """Chrome trace metadata: a process per role, a named thread per track, in ROLE_ORDER."""
        meta = []
        for role in sorted({role for role, _ in self.tracks}, key=role_pid):
            meta.append({"name": "process_name", "ph": "M", "pid": role_pid(role), "args": {"name": role}})
            meta.append({"name": "process_sort_index", "ph": "M", "pid": role_pid(role),
                         "args": {"sort_index": role_pid(role)}})
        for role, rank in self.tracks:
            meta.append({"name": "thread_name", "ph": "M", "pid": role_pid(role), "tid": role_tid(role, rank),
                         "args": {"name": track_name(role, rank)}})
        return meta

    def to_text(self) -> str:
        other = {"tracks": [{"key": list(k), "info": v} for k, v in self.tracks.items()],
                 "busy_fraction": {t: b / self.window_s for t, b in self.busy_s.items()} if self.window_s else {}}
        events = ",\n".join([json.dumps(m) for m in self._metadata()] + self.lines)
        return f'{{"displayTimeUnit": "ms", "otherData": {json.dumps(other)},\n"traceEvents": [\n{events}]}}\n'

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(self.to_text())
        os.replace(tmp, self.path)  # a kill mid-write leaves the last complete file

"""Checks of a real run's trace.json (rlhf.trace), shared by the e2e tests that already
run the pipeline (no extra runs for the timeline)."""
import json
from pathlib import Path

from rlhf.trace import TRACE_FILE, Trace, merged, track_name

# the controller phase a worker's span of each phase runs inside
DRIVER_PHASE = {"generate": "generate", "reward": "reward", "logprobs": "logprobs_values",
                "values": "logprobs_values", "update": "update", "sync": "sync", "checkpoint": "checkpoint",
                "eval": "eval"}
SLACK_S = 0.01  # one node, one clock: only rounding to microseconds and call overhead


def expected_tracks(run_dir: Path) -> list[str]:
    """The controller and a track per rank of every role the run placed (placement.json)."""
    placed = json.loads((run_dir / "placement.json").read_text())
    return ["controller", *(track_name(role, rank) for role, ranks in placed.items() for rank in range(len(ranks)))]


def load(run_dir: Path) -> Trace:
    data = json.loads((run_dir / TRACE_FILE).read_text())  # valid JSON, Chrome's object format
    assert data["displayTimeUnit"] == "ms" and all(e["ph"] in ("X", "M") for e in data["traceEvents"])
    trace = Trace(data)
    assert sorted(trace.tracks) == sorted(expected_tracks(run_dir))
    busy = data["otherData"]["busy_fraction"]
    assert set(busy) == set(trace.tracks) and all(0 < f <= 1 for f in busy.values()), busy
    return trace


def phases_by_step(trace: Trace, track: str) -> dict[int, set[str]]:
    """Step -> the phases of the track's spans inside that step's window."""
    out: dict[int, set[str]] = {}
    for step, (lo, hi) in trace.windows.items():
        out[step] = {e["name"] for e in trace.spans[track]
                     if lo - SLACK_S <= e["ts"] / 1e6 and (e["ts"] + e["dur"]) / 1e6 <= hi + SLACK_S}
    return out


def intervals(trace: Trace, track: str, phase: str, window=None) -> list[tuple[float, float]]:
    spans = [(e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6) for e in trace.spans[track] if e["name"] == phase]
    return [s for s in spans if window is None or (window[0] <= s[0] <= window[1])]


def assert_inside_driver_phases(trace: Trace, tracks: list[str]) -> None:
    """Every worker span lies inside a controller span of the same phase."""
    for track in tracks:
        for e in trace.spans[track]:
            start, end = e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6
            outer = intervals(trace, "controller", DRIVER_PHASE[e["name"]])
            assert any(s - SLACK_S <= start and end <= t + SLACK_S for s, t in outer), (track, e)


def overlap_s(a, b) -> float:
    """Seconds during which both interval sets are busy."""
    return sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in merged(a) for s2, e2 in merged(b))

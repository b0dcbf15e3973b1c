"""PNG curves of a run (reward, KL, response length, eval): `rlhf plot <run_dir>`, and the
Gantt chart of its step timeline (trace.json, rlhf.trace): `rlhf timeline <run_dir>`."""
from __future__ import annotations

from pathlib import Path

from rlhf.metrics import read_metrics, say
from rlhf.trace import IDLE_PHASES, TRACE_FILE, load_trace

PANELS = [
    ("reward", ["rollout/reward_mean"]),
    ("eval reward", ["eval/reward_mean", "eval/pass_rate"]),
    ("KL", ["kl/mean", "actor/approx_kl"]),
    ("response length", ["rollout/response_length"]),
]


# one color per phase, the same in every chart
PHASE_COLORS = {"generate": "tab:blue", "reward": "tab:orange", "logprobs": "tab:green",
                "logprobs_values": "yellowgreen", "values": "tab:cyan", "advantages": "tab:pink",
                "update": "tab:red", "sync": "tab:purple", "checkpoint": "tab:brown", "eval": "tab:gray",
                "sleep": "tab:olive", "wait_rollout": "gainsboro"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(run_dir: str | Path) -> Path:
    """curves.png, and timeline.png beside it when the run wrote a trace; returns the curves' path."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise FileNotFoundError(f"no metrics.jsonl with records in {run_dir}")
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2))
    for ax, (title, keys) in zip(axes, PANELS):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o" if len(points) < 20 else None, ms=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    if (run_dir / TRACE_FILE).exists():
        try:
            plot_timeline(run_dir)
        except ValueError as err:  # e.g. every step rolled back: the curves still stand
            say(f"no timeline.png: {err}")
    return out


def plot_timeline(run_dir: str | Path, last: int = 3, out: str | Path | None = None) -> Path:
    """timeline.png: a Gantt chart of the last `last` steps of trace.json, one row per
    track (controller, rollout engines, trainer ranks) labelled with its busy fraction
    over those steps, one color per phase; gaps are idle time. Dashed lines: step starts."""
    if last < 1:
        raise ValueError(f"--last must be at least 1, got {last}")
    trace = load_trace(run_dir)
    steps = list(trace.windows)[-last:]
    lo, hi = trace.windows[steps[0]][0], trace.windows[steps[-1]][1]
    busy = trace.busy_fractions(steps)
    plt = _pyplot()
    rows = trace.tracks
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.42 * len(rows)))
    seen = set()
    for y, track in enumerate(rows):
        for e in trace.spans[track]:
            start, end = max(e["ts"] / 1e6, lo), min((e["ts"] + e["dur"]) / 1e6, hi)
            if end <= start:
                continue
            phase = e["name"]
            ax.broken_barh([(start - lo, end - start)], (y - 0.38, 0.76), color=PHASE_COLORS.get(phase, "black"),
                           hatch="//" if phase in IDLE_PHASES else None, edgecolor="white", linewidth=0.3,
                           label=None if phase in seen else phase)
            seen.add(phase)
    for step in steps:
        start = trace.windows[step][0] - lo
        ax.axvline(start, color="black", linestyle="--", linewidth=0.6)
        ax.text(start, -0.5, f" step {step}", fontsize=8, va="bottom")
    ax.set_yticks(range(len(rows)), [f"{track}  {busy[track]:.0%} busy" for track in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.9)  # the first track on top
    ax.set_xlim(0, hi - lo)
    ax.set_xlabel(f"seconds since the start of step {steps[0]}")
    ax.set_title(f"{Path(run_dir).name}: steps {steps[0]}-{steps[-1]}", fontsize=10)
    handles = dict(zip(*reversed(ax.get_legend_handles_labels())))
    order = [p for p in PHASE_COLORS if p in handles] + sorted(set(handles) - set(PHASE_COLORS))
    ax.legend([handles[p] for p in order], order, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "timeline.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

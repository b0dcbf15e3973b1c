"""PNG curves of a run (reward, KL, response length, eval): `rlhf plot <run_dir>`."""
from __future__ import annotations

from pathlib import Path

from rlhf.metrics import read_metrics

PANELS = [
    ("reward", ["rollout/reward_mean"]),
    ("eval reward", ["eval/reward_mean", "eval/pass_rate"]),
    ("KL", ["kl/mean", "actor/approx_kl"]),
    ("response length", ["rollout/response_length"]),
]


def plot_run(run_dir: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    return out

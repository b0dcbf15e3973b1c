"""The suite's one PNG: ratios to the peers, fraction of the bf16 roof, the GRPO step
side by side with TRL, and scaling. Called by run_all.py from the saved results."""
from __future__ import annotations

from pathlib import Path


def plot_suite(r: dict, headline: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    _ratios(axes[0, 0], headline)
    _roof(axes[0, 1], r)
    _e2e(axes[1, 0], r.get("e2e"))
    _scaling(axes[1, 1], r.get("scaling"))
    machine = next((v["machine"] for v in r.values() if v and "machine" in v), None)
    if machine:
        fig.suptitle(f"{machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB; "
                     f"commit {machine['git_commit']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ratios(ax, headline: list[dict]) -> None:
    rows = [x for x in headline if x["unit"] not in ("FLOP/s",) and "lower is better" not in x["unit"]
            and x["peer"] != "memcpy"]
    if not rows:
        return ax.set_visible(False)
    labels = [f"{x['what']}\nvs {x['peer']}" for x in rows]
    ratios = [x["ratio"] for x in rows]
    colors = ["tab:green" if x["met"] == "yes" else "tab:red" if x["met"] == "no" else "tab:blue" for x in rows]
    y = range(len(rows))
    ax.barh(y, ratios, color=colors)
    for i, x in enumerate(rows):
        ax.text(x["ratio"], i, f" {x['ratio']:.2f}", va="center", fontsize=8)
        if x["target"]:
            ax.plot([x["target"]] * 2, [i - 0.4, i + 0.4], color="black", lw=2)
    ax.axvline(1.0, color="gray", ls=":")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ours / theirs (throughput; black tick = target)")
    ax.set_title("side by side, same run")


def _roof(ax, r: dict) -> None:
    bars, roofs = [], []  # (label, fraction of the roof measured by the same part)
    if ro := r.get("rollout"):
        p, roof = ro["model"]["params"], ro["bf16_matmul_flops"]
        bars += [("rollout, ours", 2 * p * ro["ours_tokens_per_s"] / roof),
                 ("rollout, bare vLLM", 2 * p * ro["bare_tokens_per_s"] / roof)]
        roofs.append(roof)
    if tr := r.get("train"):
        p, roof = tr["model"]["params"], tr["bf16_matmul_flops"]
        bars += [(f"training, {name}", 6 * p * side["tokens_per_s"] / roof) for name, side in tr["sides"].items()]
        roofs.append(roof)
    if not bars:
        return ax.set_visible(False)
    fractions = [100 * v for _, v in bars]
    ax.bar(range(len(bars)), fractions, color=["tab:gray" if "bare" in label else "tab:blue" for label, _ in bars])
    for i, f in enumerate(fractions):
        ax.text(i, f, f"{f:.0f}%", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("% of bf16 matmul roof")
    ax.set_title("model FLOP/s, % of the bf16 matmul roof ("
                 + " / ".join(f"{x / 1e9:.0f}" for x in roofs) + " GFLOP/s)")


def _e2e(ax, e2e: dict | None) -> None:
    if not e2e:
        return ax.set_visible(False)
    names = list(e2e["sides"])
    bottoms = [0.0] * len(names)
    phases = sorted({k for s in e2e["sides"].values() for k in s.get("phase_seconds", {})})
    for phase in phases:
        values = [e2e["sides"][n].get("phase_seconds", {}).get(phase, 0.0) for n in names]
        ax.bar(names, values, bottom=bottoms, label=phase)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    rest = [e2e["sides"][n]["seconds_per_step"] - b for n, b in zip(names, bottoms)]
    ax.bar(names, rest, bottom=bottoms, color="lightgray", label="rest of the step")
    for i, n in enumerate(names):
        side = e2e["sides"][n]
        ax.text(i, side["seconds_per_step"], f"{side['seconds_per_step']:.1f}s\n{side['tokens_per_s']:,.0f} tok/s",
                ha="center", va="bottom", fontsize=8)
    st = e2e["settings"]
    ax.set_ylabel("seconds per GRPO step (median after the first)")
    ax.set_title(f"GRPO step: {st['sequences']} x {st['max_new_tokens']} tokens, ours vs TRL")
    ax.legend(fontsize=7)
    ax.margins(y=0.2)


def _scaling(ax, sc: dict | None) -> None:
    if not sc:
        return ax.set_visible(False)
    st = sc["settings"]
    for axis, fixed_key, fixed, marker in (("sequences", "response_len", st["base_length"], "o"),
                                           ("response_len", "sequences", st["base_batch"], "s")):
        pts = sorted((p for p in sc["points"] if p[fixed_key] == fixed), key=lambda p: p[axis])
        if len(pts) < 2:
            continue
        x = [p[axis] / pts[0][axis] for p in pts]
        ax.plot(x, [p["seconds_per_step"] for p in pts], marker=marker,
                label=f"{axis} {'/'.join(str(p[axis]) for p in pts)}")
        ax.plot(x, [pts[0]["seconds_per_step"] * v for v in x], ls=":", color="gray")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    from matplotlib.ticker import ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("x first point (doubling)")
    ax.set_ylabel("seconds per step")
    ax.set_title("scaling (dotted: linear in the work)")
    ax.legend(fontsize=8)

"""The plan as text (the console report) and as JSON (`rlhf plan --json`, for tests and tools)."""
from __future__ import annotations

from rlhf.plan.accounting import GiB
from rlhf.plan.build import Plan


def _g(nbytes: float) -> str:
    return f"{nbytes / GiB:8.3f}"


def render(plan: Plan) -> str:
    cfg, lines = plan.cfg, []
    lines.append(f"plan: {plan.cluster.describe()}")
    for name, s in plan.shapes.items():
        lines.append(f"  model {name}: {s.name}, {s.params / 1e6:.2f}M params ({s.layers} layers, hidden {s.hidden}, "
                     f"{s.heads}/{s.kv_heads} heads, vocab {s.vocab})")
    lines.append(f"  dtypes: trainers {plan.dtypes['trainer']}, rollout {plan.dtypes['rollout']}; placement "
                 f"{cfg.cluster.placement}; batch {cfg.rollout_batch_size} sequences/step")
    lines.append("")
    lines.append("memory per role and rank (GiB; phase: always / generate / train)")
    by_rank: dict[str, list] = {}
    for item in plan.items:
        by_rank.setdefault(f"{item.role}/{item.rank}", []).append(item)
    peaks = plan.role_peaks()
    for key, items in by_rank.items():
        lines.append(f"  {key:<16} peak {peaks[key] / GiB:.3f}")
        for i in items:
            lines.append(f"    {_g(i.nbytes)}  {i.where:<6} {i.phase:<8} {i.what}")
    lines.append("")
    lines.append("per device (peak = always-resident + the larger phase)")
    for d in plan.devices:
        over = d.first_overflow()
        verdict = f"DOES NOT FIT: first over is {over.role}/{over.rank} {over.what}" if over else "fits"
        lines.append(f"  {d.name:<18} {d.peak / GiB:8.3f} of {d.capacity / GiB:8.1f} GiB "
                     f"({d.peak / d.capacity:5.1%}, peak in {d.peak_phase}): {verdict}")
    lines.append("")
    lines.append(f"per step (roof: {plan.roof_source})")
    for p in plan.phases:
        lines.append(f"  {p.name:<16} {p.flops / 1e12:9.4f} TFLOP {p.seconds:9.3f} s  {p.detail}")
    total = sum(p.seconds for p in plan.phases)
    lines.append(f"  step ~{total:.3f} s; bottleneck: {plan.bottleneck.name} ({plan.bottleneck.seconds / total:.0%})")
    lines.append(f"  weight sync per step: {plan.sync_bytes / 2**20:.2f} MiB ({plan.sync_what})")
    for note in plan.notes:
        lines.append(f"note: {note}")
    if not plan.fits:
        lines.append("rlhf plan: the run does not fit (exit status 3); see the devices above")
    return "\n".join(lines)


def to_json(plan: Plan) -> dict:
    return {
        "cluster": plan.cluster.describe(),
        "models": {k: {"name": s.name, "params": s.params} for k, s in plan.shapes.items()},
        "dtypes": plan.dtypes,
        "items": [{"role": i.role, "rank": i.rank, "what": i.what, "bytes": i.nbytes, "where": i.where,
                   "phase": i.phase} for i in plan.items],
        "role_peak_gib": {k: v / GiB for k, v in plan.role_peaks().items()},
        "devices": [{"name": d.name, "node": d.node, "capacity_gib": d.capacity / GiB, "peak_gib": d.peak / GiB,
                     "peak_phase": d.peak_phase,
                     "first_over": (lambda o: f"{o.role}/{o.rank} {o.what}" if o else None)(d.first_overflow())}
                    for d in plan.devices],
        "phases": {p.name: {"flops": p.flops, "seconds": p.seconds, "metric": p.metric, "detail": p.detail}
                   for p in plan.phases},
        "bottleneck": plan.bottleneck.name,
        "sync_bytes": plan.sync_bytes,
        "sync_what": plan.sync_what,
        "roof": plan.roof_source,
        "fits": plan.fits,
        "notes": plan.notes,
    }

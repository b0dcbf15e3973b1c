"""`rlhf` command line.

    rlhf train recipes/ppo_tiny.yaml [key=value ...]   PPO/GRPO/... run (starts or joins Ray)
    rlhf check recipes/ppo_tiny.yaml [key=value ...]   validate a recipe, print the resolved config
    rlhf plot runs/<run_dir>                           PNG curves of a run
    rlhf sft recipes/sft_tiny.yaml [key=value ...]     supervised fine-tuning (rlhf.sft)
    rlhf rm recipes/rm_tiny.yaml [key=value ...]       reward-model training (rlhf.rm)
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf", description="RLHF on Ray with vLLM and DeepSpeed")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "run a PPO-family recipe"), ("check", "validate a recipe"),
                            ("sft", "supervised fine-tuning recipe"), ("rm", "reward-model recipe")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("recipe", help="recipe YAML (see recipes/)")
        p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. actor.lr=1e-5")
    p = sub.add_parser("plot", help="write curves.png for a run directory")
    p.add_argument("run_dir")
    args = parser.parse_args(argv)

    from rlhf.config import ConfigError, load_config, to_yaml

    try:
        if args.command == "plot":
            from rlhf.plots import plot_run

            print(plot_run(args.run_dir))
            return 0
        if args.command in ("sft", "rm"):
            return run_stage(args.command, args.recipe, args.overrides)
        cfg = load_config(args.recipe, args.overrides)
        if args.command == "check":
            print(to_yaml(cfg))
            return 0
        return train(cfg)
    except ConfigError as err:
        print(f"rlhf: config error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"rlhf: error: {err}", file=sys.stderr)
        return 2


def train(cfg) -> int:
    """Start (or join) Ray, run the PPO controller, always release the cluster's resources."""
    from rlhf.controller import PPOTrainer
    from rlhf.stage_run import execute

    return execute(PPOTrainer, cfg)


def connect_ray(cfg) -> bool:
    """Join cluster.address / $RAY_ADDRESS if given, else start a local Ray. True if started here."""
    import ray

    from workers.device import setup_process_env

    setup_process_env()
    env_vars = {k: os.environ[k] for k in ("DS_ACCELERATOR", "CUDA_VISIBLE_DEVICES", "RLHF_CACHE_DIR",
                                           "RLHF_DEVICE") if k in os.environ}
    env_vars["TOKENIZERS_PARALLELISM"] = "false"
    runtime_env = {"env_vars": env_vars}
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return False
    # Roles ask for fractional CPUs; logical CPUs may exceed the physical ones.
    num_cpus = cfg.cluster.num_cpus or max(os.cpu_count() or 1, 4)
    ray.init(num_cpus=num_cpus, include_dashboard=cfg.cluster.dashboard, dashboard_host="127.0.0.1",
             runtime_env=runtime_env, log_to_driver=True)
    return True


if __name__ == "__main__":
    sys.exit(main())

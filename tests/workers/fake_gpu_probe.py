"""Run by test_fake_gpus.py in a process of its own (a Ray session of its own, with 4
fake GPUs, next to the test session's CPU-only one). Prints one JSON object.

The driver is a CPU-only head node: it carries the device variables the old driver
shipped (DS_ACCELERATOR=cpu). Roles are placed as a run places them (rlhf.cli.connect_ray,
rlhf.roles.make_placement, workers.group.WorkerGroup); each rank is a Probe reporting
what Ray gave it and what it decides from that.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import ray
from ray.util.placement_group import placement_group, remove_placement_group

ROOT = Path(__file__).resolve().parents[2]
FAKE_GPUS = 4


class Probe:
    """A rank that reports its devices instead of loading a model."""

    def ready(self) -> bool:
        return True

    def report(self) -> dict:
        from workers import device as dev

        granted = dev.ray_gpu_ids()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        out = {"node_id": ray.get_runtime_context().get_node_id(), "granted": granted, "visible": visible,
               "gpu": dev.physical_gpu(0) if granted else None}
        # What this worker decides where CUDA answers, and (real detection) here, where it does not.
        out["kind_with_cuda"] = dev.device_kind(None, granted, lambda: True)
        try:
            out["detected"] = dev.detect().kind
        except RuntimeError as err:
            out["detected"] = f"error: {err}"
        decided = dev.Device(out["kind_with_cuda"], "", "", False)
        dev.setup_process_env(decided)
        out["env_after_setup"] = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "DS_ACCELERATOR")}
        return out


    def engine_args(self, model_path: str, rollout_cfg: dict, weight_transfer) -> dict:
        """The vLLM engine arguments a RolloutWorker on this rank's device would start with."""
        from workers import device as dev
        from workers.rollout import engine_kwargs

        gpu = bool(dev.ray_gpu_ids())
        device = dev.Device("cuda", "nccl", "cuda_ipc", True) if gpu else dev.Device("cpu", "gloo", "shm", False)
        return engine_kwargs(model_path, rollout_cfg, 0, device, weight_transfer)


def reports(group) -> list[dict]:
    return group.run_all("report")


HYBRID = ["cluster.placement=colocated", "actor.num_workers=2", "rollout.num_workers=2",
          "actor.num_gpus=0.4", "rollout.num_gpus=0.4", "rollout.memory_fraction=0.35", "reference.num_gpus=0.2",
          "train.micro_batch_size=32"]


def engine_args(rollout_group, cfg) -> list[dict]:
    """What each rollout rank would pass to vllm.LLM for this config (the run's backend choice)."""
    import dataclasses

    from rlhf.roles import weight_transfer_backend

    return rollout_group.run_all("engine_args", "/models/qwen", dataclasses.asdict(cfg.rollout),
                                 weight_transfer_backend(cfg))


def hybrid_run_reports() -> dict:
    from rlhf.config import load_config
    from rlhf.roles import make_placement, role_requests
    from workers.group import WorkerGroup

    cfg = load_config(ROOT / "recipes" / "grpo_tiny.yaml", HYBRID)
    placement = make_placement(cfg, role_requests(cfg))
    out, groups = {"bundles": placement.groups[0].bundle_specs, "slots": {}}, []
    for req in role_requests(cfg):
        pg, idx = placement.of(req.role)
        out["slots"][req.role] = idx
        group = WorkerGroup(Probe, req.count, num_cpus=req.num_cpus, num_gpus=req.num_gpus,
                            placement_group=pg, bundle_indices=idx, name=req.role, distributed=False)
        groups.append(group)
        out[req.role] = reports(group)
    out["engine_args"] = engine_args(groups[0], cfg)
    for g in groups:
        g.kill(grace_s=0)
    placement.remove()
    return out


def main() -> int:
    from rlhf.cli import connect_ray
    from rlhf.config import load_config
    from rlhf.roles import make_placement, role_requests
    from workers.group import WorkerGroup

    os.environ["DS_ACCELERATOR"] = "cpu"  # what a CPU-only driver used to ship to every worker
    # A GPU node's environment: Ray numbers its GPUs from it, and workers Ray gives no GPU
    # inherit it (Ray narrows CUDA_VISIBLE_DEVICES only for the others).
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(FAKE_GPUS)))
    os.environ.pop("RLHF_DEVICE", None)
    real_init, init_kwargs = ray.init, {}

    def init_with_fake_gpus(**kwargs):
        init_kwargs.update(kwargs)
        return real_init(num_gpus=FAKE_GPUS, **kwargs)

    ray.init = init_with_fake_gpus
    cfg = load_config(ROOT / "recipes" / "ppo_gsm8k_qwen2.5_0.5b.yaml",
                      ["model.policy=/models/qwen", "cluster.num_cpus=12"])
    out: dict = {}
    try:
        connect_ray(cfg)
        out["runtime_env"] = init_kwargs["runtime_env"]
        # 1. The recipe's roles, one GPU per rank, placed as a run places them.
        placement = make_placement(cfg, role_requests(cfg))
        groups = {}
        for req in role_requests(cfg):
            pg, idx = placement.of(req.role)
            groups[req.role] = WorkerGroup(Probe, req.count, num_cpus=req.num_cpus, num_gpus=req.num_gpus,
                                           placement_group=pg, bundle_indices=idx, name=req.role,
                                           distributed=False)
        groups["cpu_role"] = WorkerGroup(Probe, 1, num_cpus=0.5, num_gpus=0.0, name="cpu_role", distributed=False)
        out["roles"] = {role: reports(g) for role, g in groups.items()}
        out["recipe_engine_args"] = engine_args(groups["rollout"], cfg)
        for g in groups.values():
            g.kill(grace_s=0)
        placement.remove()
        # 2. Two ranks sharing one GPU bundle (fractional GPUs: the hybrid engine's layout),
        #    and a third rank on a GPU of its own.
        pg = placement_group([{"CPU": 1, "GPU": 1}] * 2, strategy="PACK")
        ray.get(pg.ready(), timeout=60)
        shared = {name: WorkerGroup(Probe, 1, num_cpus=0.5, num_gpus=0.5, placement_group=pg, bundle_indices=[b],
                                    name=name, distributed=False)
                  for name, b in (("actor", 0), ("rollout", 0), ("rollout_alone", 1))}
        out["hybrid"] = {name: reports(g)[0] for name, g in shared.items()}
        for g in shared.values():
            g.kill(grace_s=0)
        remove_placement_group(pg)
        # 3. The hybrid engine as a run places it: colocated, 2 actor ranks and 2 engines
        #    at 0.4 GPU each, the reference at 0.2 (rlhf.roles.colocated_plan).
        out["hybrid_run"] = hybrid_run_reports()
    finally:
        ray.shutdown()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

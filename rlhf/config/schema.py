"""The typed configuration schema.

Every field is declared here with its default and a one-line help. A recipe YAML is
merged over these defaults and dotted `key=value` overrides over the recipe
(see `rlhf.config.load`). Unknown keys and wrong types fail at load with the key's
name; batch arithmetic is checked by `RunConfig.validate()` before any worker starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class RunSection:
    name: str = "run"                  # run name; the run directory is <output_dir>/<name>-<timestamp>
    output_dir: str = "runs"           # parent of run directories
    run_dir: Optional[str] = None      # exact run directory (overrides name/output_dir; used by resume)
    seed: int = 1                      # seeds data order, sampling and init of new heads
    total_steps: int = 10              # PPO steps (one rollout batch each)
    save_every: int = 0                # checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = 2          # newest complete checkpoints kept on disk
    resume: str = "never"              # "never" | "auto" (latest checkpoint in run_dir) | path to a checkpoint
    eval_every: int = 0                # held-out evaluation every N steps (0: only at start and end)
    log_samples_every: int = 5         # print/log sample generations every N steps (0: never)
    trackers: list[str] = field(default_factory=list)  # extra trackers: "tensorboard", "wandb", "mlflow"
    plots: bool = True                 # write PNG curves to the run directory at the end
    export_hf: bool = True             # save the final policy in Hugging Face format
    max_restarts: int = 0              # with resume=auto: times the run restarts its roles after a worker dies or hangs
    call_timeout_s: float = 1800.0     # a worker call (generate, update, ...) that takes longer is hung; 0: no limit
    max_bad_steps: int = 3             # NaN/Inf steps skipped before the run stops


@dataclass
class ModelSection:
    policy: str = "tiny:policy"        # HF path of the policy; "tiny:<name>" = kit model, built on first use
    reference: Optional[str] = None    # reference policy (default: the policy)
    critic: Optional[str] = None       # critic backbone init (default: reward_model if set, else policy)
    reward_model: Optional[str] = None # HF sequence-classification model scoring responses (optional)
    dtype: str = "auto"                # trainer dtype: "auto" (bf16 where native, else fp32) | "bf16" | "fp32"


@dataclass
class DataSection:
    train_path: str = "tiny:arith_train"  # JSONL / Parquet file, saved-dataset folder, or "tiny:<name>"
    eval_path: Optional[str] = "tiny:arith_eval"  # held-out prompts (None: no evaluation)
    prompt_key: str = "prompt"         # column holding the prompt text (or chat messages)
    label_key: str = "label"           # column holding the ground truth passed to rewards
    template: str = "plain"            # "plain" (prompt_template) | "chat" (tokenizer chat template)
    prompt_template: str = "{prompt}"  # plain template; {prompt} is replaced by the prompt column
    max_prompt_tokens: int = 32        # longer prompts are dropped and counted, never truncated
    eval_size: int = 128               # held-out prompts evaluated (first N)
    shuffle: bool = True               # reshuffle every epoch (seeded)


@dataclass
class RolloutSection:
    num_workers: int = 1               # vLLM engines; a batch is split across them
    n: int = 4                         # responses sampled per prompt (the group for GRPO/RLOO)
    temperature: float = 1.0           # sampling temperature (trainer logprobs use the same)
    top_p: float = 1.0
    top_k: int = -1                    # -1: off
    max_new_tokens: int = 8            # response budget
    stop_token_ids: list[int] = field(default_factory=list)  # extra stop tokens besides EOS
    eval_temperature: float = 0.0      # 0: greedy evaluation
    dtype: str = "auto"                # engine dtype, weights synced in it: "auto" (bf16 where native, else fp32) | vLLM name
    memory_fraction: float = 0.3       # GPU: fraction of device memory; CPU: of host memory
    kv_cache_gib: float = 1.0          # CPU: KV-cache size (VLLM_CPU_KVCACHE_SPACE)
    enforce_eager: bool = True         # skip graph compilation (CPU: faster start, same speed)
    num_cpus: float = 0.5              # Ray CPUs per engine
    num_gpus: float = 0.0              # Ray GPUs per engine (GPU machines)
    sleep_between_steps: bool = False  # GPU colocated: free KV cache while training (vLLM sleep mode)


@dataclass
class KLSection:
    estimator: str = "k1"              # k1 | abs | k2 | k3 (rlhf.algorithms.KL_ESTIMATORS)
    in_reward: bool = True             # per-token KL penalty in the reward (PPO style)
    loss_coef: float = 0.0             # > 0: KL term in the actor loss (GRPO style)
    loss_estimator: str = "k3"         # estimator of the loss term
    controller: str = "fixed"          # "fixed" | "adaptive" (Ziegler et al. 2019)
    coef: float = 0.01                 # initial coefficient of the in-reward penalty
    target: float = 0.1                # adaptive: target KL per sequence
    horizon: int = 10000               # adaptive: horizon in samples


@dataclass
class AlgorithmSection:
    adv_estimator: str = "gae"         # gae | grpo | rloo | reinforce++ | reinforce++-baseline
    gamma: float = 1.0
    lam: float = 0.95
    norm_adv_by_std: bool = True       # grpo: False = Dr. GRPO (mean-only)
    policy_loss: str = "vanilla"       # rlhf.algorithms.POLICY_LOSSES
    clip_low: float = 0.2              # PPO ratio clip below 1
    clip_high: float = 0.2             # above 1 (clip-higher, DAPO: e.g. 0.28)
    dual_clip: Optional[float] = None  # dual-clip c > 1 for negative advantages (Ye et al. 2020)
    loss_agg_mode: str = "token-mean"  # token-mean | seq-mean-token-sum | seq-mean-token-mean | seq-mean-token-sum-norm
    value_clip: float = 0.2            # critic value clipping range
    entropy_coef: float = 0.0          # entropy bonus in the actor loss
    tis_cap: Optional[float] = None    # truncated IS weights rollout->trainer, capped (None: off)
    overlong_buffer: int = 0           # DAPO soft overlong penalty window in tokens (0: off)
    overlong_penalty: float = 1.0      # penalty at the full budget
    kl: KLSection = field(default_factory=KLSection)

    @property
    def uses_critic(self) -> bool:
        return self.adv_estimator == "gae"


@dataclass
class TrainerSection:
    """One trainer role (actor or critic) on DeepSpeed."""
    num_workers: int = 1               # data-parallel ranks (one Ray actor each)
    zero_stage: int = 2                # DeepSpeed ZeRO stage 0-3
    lr: float = 1e-5
    warmup_steps: int = 0              # linear warmup (optimizer steps), then constant
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    offload_optimizer: bool = False    # ZeRO optimizer state offload to CPU
    offload_params: bool = False       # ZeRO-3 parameter offload to CPU
    grad_checkpointing: bool = False
    num_cpus: float = 0.5              # Ray CPUs per rank
    num_gpus: float = 0.0              # Ray GPUs per rank


@dataclass
class ReferenceSection:
    zero_stage: int = 0                # 0: plain module; 3: ZeRO-3 sharded inference
    offload_params: bool = False
    num_cpus: float = 0.25
    num_gpus: float = 0.0


@dataclass
class TrainSection:
    prompts_per_step: int = 16         # prompts per PPO step; rollout batch = prompts_per_step * rollout.n
    ppo_epochs: int = 1                # passes over the rollout batch
    mini_batch_size: int = 64          # sequences per optimizer step (over all ranks)
    micro_batch_size: int = 16         # sequences per forward/backward on one rank
    # On-policy steps (1 epoch, 1 mini-batch, KL not in the reward): take the old
    # log-probs from the update's own forward instead of a separate actor pass (as TRL
    # does with num_iterations=1). The ratio is then exactly 1, as it would be anyway.
    old_logprobs_from_update: bool = True


@dataclass
class RewardFnSection:
    name: str = "task"                 # logged as reward/<name>
    fn: str = "tiny_arithmetic"        # built-in name, "file.py:fn" or "package.module:fn"
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardSection:
    functions: list[RewardFnSection] = field(default_factory=lambda: [RewardFnSection()])
    model_weight: float = 1.0          # weight of model.reward_model's score (when set)
    model_normalize: bool = False      # standardise reward-model scores over the batch
    num_workers: int = 1               # processes running user reward functions
    timeout_s: float = 30.0            # per call
    on_error: str = "fail"             # "fail" | "score" (use error_score, count in reward/errors)
    error_score: float = 0.0
    num_cpus: float = 0.25             # Ray CPUs of the reward-model worker


@dataclass
class SyncSection:
    transport: str = "auto"            # "auto" (same node: shm / CUDA IPC) | "shm" | "process_group"
    bucket_mb: int = 256               # flat bucket size


@dataclass
class ClusterSection:
    address: Optional[str] = None      # Ray address to join (default: $RAY_ADDRESS, else start locally)
    num_cpus: Optional[int] = None     # CPUs of a locally started Ray (default: all)
    placement: str = "colocated"       # "colocated" (one placement group) | "split" (one per role)
    dashboard: bool = False            # local Ray dashboard (binds 127.0.0.1)
    # CPU threads of each worker's torch. 0: per phase, the roles busy in it split their
    # nodes' cores (a GRPO update alone gets all of them, PPO's concurrent actor and critic
    # updates half each). N > 0: always N (OMP_NUM_THREADS), whatever runs concurrently.
    torch_threads: int = 0
    # Per role, custom Ray resources each rank also asks for: {rollout: {rlhf_worker: 1}} puts the
    # rollout engines on nodes started with `ray start --resources '{"rlhf_worker": 8}'`.
    # Roles: rollout, actor, critic, reference, reward_model (sft / rm for those stages).
    role_resources: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class RunConfig:
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    algorithm: AlgorithmSection = field(default_factory=AlgorithmSection)
    train: TrainSection = field(default_factory=TrainSection)
    actor: TrainerSection = field(default_factory=lambda: TrainerSection(lr=1e-5))
    critic: TrainerSection = field(default_factory=lambda: TrainerSection(lr=5e-5))
    reference: ReferenceSection = field(default_factory=ReferenceSection)
    reward: RewardSection = field(default_factory=RewardSection)
    sync: SyncSection = field(default_factory=SyncSection)
    cluster: ClusterSection = field(default_factory=ClusterSection)

    # -- derived sizes (computed from fields; the config is read-only after load) --
    @property
    def rollout_batch_size(self) -> int:
        """Sequences per PPO step."""
        return self.train.prompts_per_step * self.rollout.n

    @property
    def mini_batches_per_epoch(self) -> int:
        return self.rollout_batch_size // self.train.mini_batch_size

    @property
    def old_logprobs_from_update(self) -> bool:
        """True when the actor's update can score the old log-probs itself (see the key)."""
        return (self.train.old_logprobs_from_update and self.train.ppo_epochs == 1
                and self.mini_batches_per_epoch == 1 and not self.algorithm.kl.in_reward)

    def micro_batches_per_mini_batch(self, ranks: int) -> int:
        """Gradient-accumulation steps of one rank in one optimizer step."""
        return self.train.mini_batch_size // (ranks * self.train.micro_batch_size)

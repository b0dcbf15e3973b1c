"""The typed configuration schema.

Every field is declared here with its default and a one-line help. A recipe YAML is
merged over these defaults and dotted `key=value` overrides over the recipe
(see `rlhf.config.load`). Unknown keys and wrong types fail at load with the key's
name; ranges and choices are declared on the fields (`positive(10)`, `one_of(...)`,
rlhf.config.checks) and checked with the batch arithmetic by `rlhf.config.validate`
before any worker starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from rlhf.config.checks import in_range, non_negative, one_of, positive


@dataclass
class RunSection:
    name: str = "run"                  # run name; the run directory is <output_dir>/<name>-<timestamp>
    output_dir: str = "runs"           # parent of run directories
    run_dir: Optional[str] = None      # exact run directory (overrides name/output_dir; used by resume)
    seed: int = non_negative(1)        # seeds data order, sampling and init of new heads
    total_steps: int = positive(10)    # PPO steps (one rollout batch each)
    save_every: int = non_negative(0)  # checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = positive(2)  # newest complete checkpoints kept on disk
    resume: str = "never"              # "never" | "auto" (latest checkpoint in run_dir) | path to a checkpoint
    eval_every: int = non_negative(0)  # held-out evaluation every N steps (0: only at start and end)
    log_samples_every: int = non_negative(5)  # print/log sample generations every N steps (0: never)
    trackers: list[str] = field(default_factory=list)  # extra trackers: "tensorboard", "wandb", "mlflow"
    plots: bool = True                 # write PNG curves to the run directory at the end
    export_hf: bool = True             # save the final policy in Hugging Face format
    max_restarts: int = non_negative(0)  # with resume=auto: times the run restarts its roles after a worker dies or hangs
    call_timeout_s: float = non_negative(1800.0)  # a worker call (generate, update, ...) that takes longer is hung; 0: no limit
    max_bad_steps: int = non_negative(3)  # NaN/Inf steps skipped before the run stops


@dataclass
class ModelSection:
    policy: str = "tiny:policy"        # HF path of the policy; "tiny:<name>" = kit model, built on first use
    reference: Optional[str] = None    # reference policy (default: the policy)
    critic: Optional[str] = None       # critic backbone init (default: reward_model if set, else policy)
    reward_model: Optional[str] = None # HF sequence-classification model scoring responses (optional)
    dtype: str = one_of("auto", "bf16", "fp32")  # trainer dtype: "auto" (bf16 where native, else fp32) | "bf16" | "fp32"


@dataclass
class DataSection:
    train_path: str = "tiny:arith_train"  # JSONL / Parquet file, saved-dataset folder, or "tiny:<name>"
    eval_path: Optional[str] = "tiny:arith_eval"  # held-out prompts (None: no evaluation)
    prompt_key: str = "prompt"         # column holding the prompt text (or chat messages)
    label_key: Optional[str] = "label" # column holding the ground truth passed to rewards (null: none)
    template: str = one_of("plain", "chat")  # "plain" (prompt_template) | "chat" (tokenizer chat template)
    prompt_template: str = "{prompt}"  # plain template; {prompt} is replaced by the prompt column
    max_prompt_tokens: int = positive(32)  # longer prompts are dropped and counted, never truncated
    eval_size: int = positive(128)     # held-out prompts evaluated (first N)
    shuffle: bool = True               # reshuffle every epoch (seeded)


@dataclass
class AgentSection:
    """Multi-turn rollouts (rlhf.agent): on when `environment` or `tools` is set."""
    environment: Optional[str] = None  # "path/to/env.py:Class" or a registered name (rlhf.agent.env)
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the environment class
    tools: list[str] = field(default_factory=list)  # built-ins (calculator, python) or "file.py:fn": a tool-calling environment
    max_turns: int = positive(4)       # policy turns per trajectory
    max_total_tokens: int = positive(256)  # tokens after the prompt (policy + observations); rollout.max_new_tokens is per turn
    max_observation_tokens: int = positive(256)  # a longer observation ends the trajectory with an error
    tool_timeout_s: float = positive(10.0)  # per tool call / environment step
    tool_max_output_chars: int = positive(2000)  # longer tool output is cut (and counted as a tool error)
    concurrency: int = non_negative(0)  # trajectories in flight per engine (0: all)
    stop: list[str] = field(default_factory=lambda: ["</tool_call>"])  # strings that end a turn (besides EOS)
    tools_in_prompt: bool = True       # describe the tools in the prompt (chat template tools=, else a plain header)
    env_reward_weight: float = 1.0     # the environment's rewards add to the score with this weight
    on_error: str = one_of("continue", "fail")  # an environment that raises/hangs/floods: end its trajectory | stop

    @property
    def enabled(self) -> bool:
        return bool(self.environment or self.tools)


@dataclass
class RolloutSection:
    num_workers: int = positive(1)     # vLLM engines; a batch is split across them
    n: int = positive(4)               # responses sampled per prompt (the group for GRPO/RLOO)
    temperature: float = positive(1.0)  # sampling temperature (trainer logprobs use the same)
    top_p: float = in_range(1.0, 0, 1, low_open=True)
    top_k: int = in_range(-1, -1, None)   # -1 or 0: off
    max_new_tokens: int = positive(8)  # response budget
    stop_token_ids: list[int] = non_negative(list)  # extra stop tokens besides EOS
    eval_temperature: float = non_negative(0.0)  # 0: greedy evaluation
    dtype: str = "auto"                # engine dtype, weights synced in it: "auto" (bf16 where native, else fp32) | vLLM name
    memory_fraction: float = in_range(0.3, 0, 1, low_open=True)  # GPU: fraction of device memory; CPU: of host memory
    kv_cache_gib: float = positive(1.0)  # CPU: KV-cache size (VLLM_CPU_KVCACHE_SPACE)
    enforce_eager: Optional[bool] = None  # None: per device (CPU eager: faster start, same speed; GPU: CUDA graphs)
    tensor_parallel_size: int = positive(1)  # GPUs each engine shards its model over (rollout.num_gpus must equal it)
    num_cpus: float = positive(0.5)    # Ray CPUs per engine
    num_gpus: float = non_negative(0.0)  # Ray GPUs per engine (GPU machines)
    mode: str = one_of("sync", "one_step", "async")  # one_step: the next step's batch generates while this one trains; async: up to max_staleness batches ahead (rlhf/overlap.py)
    max_staleness: int = non_negative(1)  # weight versions a sample may lag the policy it trains (one_step: 1; async 0 = sync)
    partial: str = one_of("finish", "resume")  # async: requests in flight when new weights arrive finish on the old ones, or pause and resume on the new (workers/partial.py)
    agent: AgentSection = field(default_factory=AgentSection)  # multi-turn rollouts with tools / environments
    sleep_between_steps: Optional[bool] = None  # vLLM sleep mode while training; None: on in the hybrid engine (colocated, rollout.num_gpus < 1)


@dataclass
class KLSection:
    estimator: str = "k1"              # k1 | abs | k2 | k3 (rlhf.algorithms.KL_ESTIMATORS)
    # Per-token KL penalty in the reward (PPO style). None: on exactly when the estimator
    # reads token rewards (gae, reinforce++*), off for grpo / rloo, which read only the
    # scores; true with such an estimator is refused (it would have no effect).
    in_reward: Optional[bool] = None
    loss_coef: float = non_negative(0.0)  # > 0: KL term in the actor loss (GRPO style)
    loss_estimator: str = "k3"         # estimator of the loss term
    controller: str = one_of("fixed", "adaptive")  # "fixed" | "adaptive" (Ziegler et al. 2019)
    coef: float = non_negative(0.01)   # initial coefficient of the in-reward penalty
    target: float = positive(0.1)      # adaptive: target KL per sequence
    horizon: int = positive(10000)     # adaptive: horizon in samples


@dataclass
class AlgorithmSection:
    adv_estimator: str = "gae"         # gae | grpo | rloo | reinforce++ | reinforce++-baseline
    gamma: float = in_range(1.0, 0, 1, low_open=True)
    lam: float = in_range(0.95, 0, 1)
    norm_adv_by_std: bool = True       # grpo: False = Dr. GRPO (mean-only)
    policy_loss: str = "vanilla"       # rlhf.algorithms.POLICY_LOSSES: vanilla | gspo | gspo_token (GSPO: clip_low/high ~3e-4/4e-4)
    clip_low: float = in_range(0.2, 0, 1, low_open=True, high_open=True)  # PPO ratio clip below 1
    clip_high: float = positive(0.2)   # above 1 (clip-higher, DAPO: e.g. 0.28)
    dual_clip: Optional[float] = in_range(None, 1, None, low_open=True)  # c > 1: dual-clip of negative advantages (Ye 2020)
    loss_agg_mode: str = one_of("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
    value_clip: float = positive(0.2)  # critic value clipping range
    entropy_coef: float = non_negative(0.0)  # entropy bonus in the actor loss
    tis_cap: Optional[float] = positive(None)  # truncated IS weights rollout->trainer, capped (None: off)
    overlong_buffer: int = non_negative(0)  # DAPO soft overlong penalty window in tokens (0: off)
    overlong_penalty: float = non_negative(1.0)  # penalty at the full budget
    filter_groups: bool = False        # DAPO dynamic sampling: drop all-equal-reward groups, generate more (group estimators)
    max_gen_batches: int = positive(4)  # filter_groups: generation rounds per step at most (then train on what is there)
    kl: KLSection = field(default_factory=KLSection)

    @property
    def needs(self):
        """What the estimator declared at registration (rlhf.algorithms.EstimatorNeeds)."""
        from rlhf.algorithms import estimator_needs

        return estimator_needs(self.adv_estimator)

    @property
    def uses_critic(self) -> bool:
        return self.needs.critic

    @property
    def kl_in_reward(self) -> bool:
        """kl.in_reward resolved: an explicit value, else whether the estimator reads token rewards."""
        return self.needs.token_rewards if self.kl.in_reward is None else self.kl.in_reward


@dataclass
class LoRASection:
    """Low-rank adapters (peft) instead of full fine-tuning: only the adapters train and
    carry optimizer state. Actor: the reference is the base model with the adapters off
    (no reference role), and the weight sync sends only the adapter (see sync.lora_merge)."""
    rank: Optional[int] = non_negative(None)  # adapter rank r; 0 / null: LoRA off (full fine-tuning)
    alpha: float = positive(16.0)      # scaling: the update is alpha / rank * B @ A
    dropout: float = in_range(0.0, 0, 1, high_open=True)  # on the adapter input; > 0 makes the first PPO ratio != 1
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # module names, or "all-linear" (every linear layer but the output head)
    export_merged: bool = False        # final export: also the base model with the adapter merged (HF format)

    @property
    def enabled(self) -> bool:
        return bool(self.rank)


@dataclass
class TrainerSection:
    """One trainer role (actor or critic) on DeepSpeed."""
    num_workers: int = positive(1)     # data-parallel ranks (one Ray actor each)
    zero_stage: int = one_of(0, 1, 2, 3, default=2)  # DeepSpeed ZeRO stage 0-3
    lr: float = positive(1e-5)
    warmup_steps: int = non_negative(0)  # linear warmup (optimizer steps), then constant
    weight_decay: float = non_negative(0.0)
    grad_clip: float = non_negative(1.0)
    offload_optimizer: bool = False    # ZeRO optimizer state offload to CPU
    offload_params: bool = False       # ZeRO-3 parameter offload to CPU
    grad_checkpointing: bool = False
    num_cpus: float = positive(0.5)    # Ray CPUs per rank
    num_gpus: float = non_negative(0.0)  # Ray GPUs per rank
    lora: LoRASection = field(default_factory=LoRASection)  # rank > 0: train LoRA adapters only


@dataclass
class ReferenceSection:
    zero_stage: int = one_of(0, 1, 2, 3, default=0)  # 0: plain module; 3: ZeRO-3 sharded inference
    offload_params: bool = False
    num_cpus: float = positive(0.25)
    num_gpus: float = non_negative(0.0)


@dataclass
class TrainSection:
    prompts_per_step: int = positive(16)  # prompts per PPO step; rollout batch = prompts_per_step * rollout.n
    ppo_epochs: int = positive(1)      # passes over the rollout batch
    mini_batch_size: int = positive(64)  # sequences per optimizer step (over all ranks)
    micro_batch_size: int = positive(16)  # sequences per forward/backward on one rank
    # Padding-free forwards (actor, critic, reference, reward model): a micro-batch's
    # sequences concatenated into one row, attention confined to each (rlhf.packing).
    # "auto": per micro-batch, when it does no more work than padding (packing_pays).
    packing: str = one_of("auto", "always", "never")
    # > 0: training micro-batches hold at most this many tokens (packed: real tokens;
    # padded: rows x width), balanced by length, as many on every rank; 0: micro_batch_size rows.
    max_tokens_per_micro_batch: int = non_negative(0)
    # The same for the no-grad passes (old and reference log-probs, values, reward scores).
    max_tokens_per_infer_batch: int = non_negative(0)
    # torch.compile (inductor, dynamic shapes) of the actor's / critic's module. Off:
    # measured slower on CPU (BENCHMARKS.md, "Packing").
    compile: bool = False
    # On-policy steps (1 epoch, 1 mini-batch, KL not in the reward): take the old
    # log-probs from the update's own forward instead of a separate actor pass (as TRL
    # does with num_iterations=1). The ratio is then exactly 1, as it would be anyway.
    old_logprobs_from_update: bool = True
    # PPO steps at the start that train only the critic (value warm-up, verl's
    # trainer.critic_warmup): the actor is not updated and no weights are synced. Not
    # critic.warmup_steps, which is the critic's learning-rate warmup.
    critic_warmup_steps: int = non_negative(0)


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
    num_workers: int = positive(1)     # processes running user reward functions
    timeout_s: float = positive(30.0)  # per call
    on_error: str = one_of("fail", "score")  # "fail" | "score" (use error_score, count in reward/errors)
    error_score: float = 0.0
    num_cpus: float = positive(0.25)   # Ray CPUs of the reward-model worker
    num_gpus: float = non_negative(0.0)  # Ray GPUs of the reward-model worker


@dataclass
class SyncSection:
    transport: str = one_of("auto", "shm", "process_group")  # "auto": CUDA IPC on one physical GPU, shm with a CPU side on one node, else process_group
    bucket_mb: int = positive(256)     # flat bucket size
    # actor.lora on: false sends only the adapter (vLLM serves it as one LoRA version per
    # sync); true merges it into the base weights and sends full tensors (engines without LoRA)
    lora_merge: bool = False


@dataclass
class ClusterSection:
    address: Optional[str] = None      # Ray address to join (default: $RAY_ADDRESS, else start locally)
    num_cpus: Optional[int] = positive(None)  # CPUs of a locally started Ray (default: all)
    placement: str = one_of("colocated", "split")  # "colocated" (one placement group) | "split" (one per role)
    dashboard: bool = False            # local Ray dashboard (binds 127.0.0.1)
    # CPU threads of each worker's torch. 0: per phase, the roles busy in it split their
    # nodes' cores (a GRPO update alone gets all of them, PPO's concurrent actor and critic
    # updates half each). N > 0: always N (OMP_NUM_THREADS), whatever runs concurrently.
    torch_threads: int = non_negative(0)
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
    def response_budget(self) -> int:
        """Response slots of a batch row: one completion, or a whole multi-turn trajectory."""
        agent = self.rollout.agent
        return agent.max_total_tokens if agent.enabled else self.rollout.max_new_tokens

    @property
    def mini_batches_per_epoch(self) -> int:
        return self.rollout_batch_size // self.train.mini_batch_size

    @property
    def old_logprobs_from_update(self) -> bool:
        """True when the actor's update can score the old log-probs itself (see the key)."""
        kl_reaches_advantages = self.algorithm.kl_in_reward and self.algorithm.needs.token_rewards
        return (self.train.old_logprobs_from_update and self.train.ppo_epochs == 1
                and self.mini_batches_per_epoch == 1 and not kl_reaches_advantages)

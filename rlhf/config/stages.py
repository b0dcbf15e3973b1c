"""Config schemas of the offline stages: `rlhf sft`, `rlhf rm` and `rlhf dpo`.

Same machinery as the PPO schema (rlhf.config.schema): dataclasses -> OmegaConf,
recipe YAML merged over the defaults, dotted overrides over the recipe. The
`run`, `trainer` and `cluster` sections are the PPO ones; of `run`, these stages use
name, output_dir, run_dir, seed, total_steps (optimizer steps), eval_every,
trackers and export_hf. A recipe names its stage with a top-level `stage:` key,
which is how `load_config(recipe)` picks the schema.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from rlhf.config.checks import in_range, non_negative, one_of, positive
from rlhf.config.schema import ClusterSection, RunSection, TrainerSection


@dataclass
class StageModelSection:
    path: str = "tiny:policy_init"     # HF model to fine-tune; "tiny:<name>" = kit model
    dtype: str = one_of("auto", "bf16", "fp32")  # trainer dtype: "auto" (bf16 where supported) | "bf16" | "fp32"


@dataclass
class StageBatchSection:
    """The two batch sizes `workers.trainer_base.DeepSpeedTrainer` reads."""
    mini_batch_size: int = positive(32)  # sequences per optimizer step (over all ranks)
    micro_batch_size: int = positive(16)  # sequences per forward/backward on one rank
    # a micro-batch's sequences in one row, attention confined to each (rlhf.packing, as the
    # PPO train.packing); "auto": when it does no more work than padding
    packing: str = one_of("auto", "always", "never")
    # > 0: micro-batches of at most this many tokens instead of micro_batch_size rows (SFT only:
    # a preference stage keeps each pair in one micro-batch)
    max_tokens_per_micro_batch: int = non_negative(0)


@dataclass
class SFTDataSection:
    train_path: str = "tiny:arith_sft"  # JSONL(.gz) / Parquet / saved dataset with prompt and response columns
    eval_path: Optional[str] = None    # held-out file (None: the last eval_size rows of train_path are held out)
    eval_size: int = positive(256)     # held-out rows
    prompt_key: str = "prompt"
    response_key: str = "response"
    max_tokens: int = positive(64)     # prompt + response + EOS; longer rows are dropped and counted
    shuffle: bool = True               # reshuffle every epoch (seeded)


@dataclass
class SFTConfig:
    stage: str = "sft"                 # marks the recipe as an `rlhf sft` recipe
    run: RunSection = field(default_factory=lambda: RunSection(name="sft", total_steps=200, eval_every=50))
    model: StageModelSection = field(default_factory=StageModelSection)
    data: SFTDataSection = field(default_factory=SFTDataSection)
    train: StageBatchSection = field(default_factory=StageBatchSection)
    trainer: TrainerSection = field(default_factory=lambda: TrainerSection(lr=1e-3, warmup_steps=10))
    cluster: ClusterSection = field(default_factory=ClusterSection)

    @property
    def batch(self) -> StageBatchSection:
        """Sequences per optimizer step / per micro-batch, as the trainer workers read them."""
        return self.train


@dataclass
class PreferenceDataSection:
    train_path: str = "data/hh-rlhf/harmless-base.jsonl.gz"  # JSONL(.gz) / Parquet; relative to the current dir (shipped: data/)
    eval_path: Optional[str] = None    # held-out file (None: the last eval_size pairs of train_path are held out)
    eval_size: int = positive(256)     # held-out pairs
    format: str = one_of("auto", "hh", "pairs")  # "hh" (chosen/rejected full dialogues) | "pairs" (prompt/chosen/rejected) | "auto"
    prompt_key: str = "prompt"         # "pairs" format columns
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    max_tokens: int = positive(384)    # prompt + response + EOS; longer pairs are dropped and counted
    max_prompt_tokens: Optional[int] = positive(None)  # keep only the LAST N prompt tokens (explicit left truncation; None: off)
    shuffle: bool = True


@dataclass
class RMTrainSection:
    mini_batch_size: int = positive(16)  # PAIRS per optimizer step (over all ranks); 2 sequences each
    micro_batch_size: int = positive(8)  # pairs per forward/backward on one rank
    packing: str = one_of("auto", "always", "never")  # as SFT's train.packing
    margin: float = non_negative(0.0)  # Bradley-Terry margin m in -log sigmoid(r_c - r_r - m)


@dataclass
class RMConfig:
    stage: str = "rm"                  # marks the recipe as an `rlhf rm` recipe
    run: RunSection = field(default_factory=lambda: RunSection(name="rm", total_steps=200, eval_every=50))
    model: StageModelSection = field(default_factory=lambda: StageModelSection(path="tiny:scorer"))
    data: PreferenceDataSection = field(default_factory=PreferenceDataSection)
    train: RMTrainSection = field(default_factory=RMTrainSection)
    trainer: TrainerSection = field(default_factory=lambda: TrainerSection(lr=3e-4, warmup_steps=10))
    cluster: ClusterSection = field(default_factory=ClusterSection)

    @property
    def batch(self) -> StageBatchSection:
        """A pair is two sequences (chosen, rejected) side by side in the batch."""
        return StageBatchSection(2 * self.train.mini_batch_size, 2 * self.train.micro_batch_size,
                                 packing=self.train.packing)


@dataclass
class DPOTrainSection:
    mini_batch_size: int = positive(16)  # PAIRS per optimizer step (over all ranks); 2 sequences each
    micro_batch_size: int = positive(8)  # pairs per forward/backward on one rank
    packing: str = one_of("auto", "always", "never")  # as SFT's train.packing
    loss: str = one_of("sigmoid", "ipo", "cdpo")  # rlhf.algorithms.DPO_LOSSES: DPO | IPO | label-smoothed (cDPO)
    beta: float = positive(0.1)        # KL strength: r = beta * (log pi - log pi_ref); IPO: its tau
    label_smoothing: float = in_range(0.0, 0, 0.5, high_open=True)  # cdpo: probability a label is flipped


@dataclass
class DPOConfig:
    stage: str = "dpo"                 # marks the recipe as an `rlhf dpo` recipe
    run: RunSection = field(default_factory=lambda: RunSection(name="dpo", total_steps=200, eval_every=50))
    model: StageModelSection = field(default_factory=StageModelSection)  # the policy; also the frozen reference
    data: PreferenceDataSection = field(default_factory=PreferenceDataSection)
    train: DPOTrainSection = field(default_factory=DPOTrainSection)
    trainer: TrainerSection = field(default_factory=lambda: TrainerSection(lr=1e-4, warmup_steps=10))
    cluster: ClusterSection = field(default_factory=ClusterSection)

    @property
    def batch(self) -> StageBatchSection:
        """A pair is two sequences (chosen, rejected) side by side in the batch."""
        return StageBatchSection(2 * self.train.mini_batch_size, 2 * self.train.micro_batch_size,
                                 packing=self.train.packing)


STAGE_SCHEMAS = {"sft": SFTConfig, "rm": RMConfig, "dpo": DPOConfig}

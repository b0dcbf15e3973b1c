"""The TRL side of bench_learning.py: one seeded GRPOTrainer run with held-out evaluation.

Runs inside TRL's own venv (bench_e2e.trl_venv() makes it). Everything that must match
our side comes from the settings file bench_learning.py writes: the train prompts in
the order our sampler visits them (TRL's shuffling is off), the held-out prompts as
our pipeline tokenized them, the trainer settings mapped from the recipe, and the
recipe's reward specs, scored with the project's own `rewards` package (pure Python,
imported from the repository root). Writes one JSON line per held-out evaluation to
<out>/evals.jsonl.

    <trl-venv>/bin/python scripts/bench/trl_learning.py <settings.json> <out_dir>
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the project's `rewards` package (no ray / vllm / deepspeed)

from transformers import TrainerCallback  # noqa: E402  (TRL's venv only)


def make_reward_fn(s: dict):
    """A TRL reward function scoring with the recipe's reward specs, exactly as our pipeline does."""
    from rewards import RewardManager, RewardSpec

    manager = RewardManager([RewardSpec(**spec) for spec in s["reward_specs"]], num_workers=0, base_dir=str(ROOT))
    label_key, columns = s["label_key"], s["extra_columns"]

    def recipe_reward(prompts, completions, **kwargs):
        extra = {c: kwargs[c] for c in columns}
        return manager.score(prompts, completions, kwargs[label_key], extra).scores

    return manager, recipe_reward


class HeldOutEval(TrainerCallback):
    """TrainerCallback: greedy generate on the held-out prompts every `eval_every` RL steps
    (and at the start and the end); exact answer = reward >= 1. The time spent here is
    kept out of the training clock."""

    def __init__(self, s: dict, manager, tokenizer, out: Path):
        self.s, self.manager, self.tok = s, manager, tokenizer
        self.file = open(out / "evals.jsonl", "w")
        self.eval_seconds = 0.0
        self.started = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.started = time.perf_counter()
        self.evaluate(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        per_step = self.s["optimizer_steps_per_rl_step"]
        if state.global_step % per_step:
            return
        step = state.global_step // per_step
        every = self.s["eval_every"]  # 0: only at the start and the end, as our run.eval_every
        if (every and step % every == 0) or state.global_step == state.max_steps:
            self.evaluate(model, step)

    def evaluate(self, model, step: int) -> None:
        import torch
        from transformers import GenerationConfig

        began = time.perf_counter()
        train_seconds = began - self.started - self.eval_seconds
        ids = self.s["eval_prompt_ids"]
        width = max(map(len, ids))
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in ids])  # left padding
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids])
        greedy = GenerationConfig(do_sample=False, max_new_tokens=self.s["max_new_tokens"], pad_token_id=pad,
                                  eos_token_id=self.tok.eos_token_id)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention, generation_config=greedy)
        model.train(was_training)
        texts = self.tok.batch_decode(out[:, width:], skip_special_tokens=True)
        scores = self.manager.score(self.s["eval_prompts"], texts, self.s["eval_labels"],
                                    self.s["eval_columns"]).scores
        record = {"step": step, "train_seconds": train_seconds,
                  "pass_rate": sum(x >= 1.0 - 1e-6 for x in scores) / len(scores),
                  "reward_mean": sum(scores) / len(scores)}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self.eval_seconds += time.perf_counter() - began
        print(f"[trl] step {step}: held-out exact {record['pass_rate']:.3f}", flush=True)


def grpo_config(s: dict, out: Path):
    import torch
    from trl import GRPOConfig

    t = s["trl"]
    return GRPOConfig(
        output_dir=str(out / "trainer"), use_cpu=True, bf16=False, fp16=False, seed=s["seed"],
        max_steps=s["steps"] * s["optimizer_steps_per_rl_step"], shuffle_dataset=False,
        per_device_train_batch_size=t["micro_batch"], gradient_accumulation_steps=t["grad_accum"],
        steps_per_generation=t["steps_per_generation"], num_iterations=t["num_iterations"],
        num_generations=s["n"], max_completion_length=s["max_new_tokens"], temperature=t["temperature"],
        top_p=t["top_p"], top_k=t["top_k"], learning_rate=t["lr"],
        lr_scheduler_type="constant_with_warmup" if t["warmup_steps"] else "constant", warmup_steps=t["warmup_steps"],
        weight_decay=t["weight_decay"], max_grad_norm=t["grad_clip"], adam_beta1=t["adam_betas"][0],
        adam_beta2=t["adam_betas"][1], adam_epsilon=t["adam_eps"], beta=t["kl_coef"], epsilon=t["clip_low"],
        epsilon_high=t["clip_high"], loss_type=t["loss_type"], scale_rewards=t["scale_rewards"],
        entropy_coef=t["entropy_coef"], gradient_checkpointing=t["gradient_checkpointing"],
        model_init_kwargs={"dtype": torch.float32}, logging_steps=1, report_to="none", save_strategy="no",
        dataloader_num_workers=0, log_completions=False, disable_tqdm=True)


def main(settings_path: str, out_dir: str) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    s = json.loads(Path(settings_path).read_text())
    out = Path(out_dir)
    dataset = Dataset.from_list(s["train_rows"])
    tok = AutoTokenizer.from_pretrained(s["model_path"])
    manager, reward_fn = make_reward_fn(s)
    held_out = HeldOutEval(s, manager, tok, out)
    trainer = GRPOTrainer(model=s["model_path"], reward_funcs=reward_fn, args=grpo_config(s, out),
                          train_dataset=dataset, processing_class=tok, callbacks=[held_out])
    trainer.train()
    held_out.file.close()
    manager.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""The TRL side of bench_e2e.py: GRPO steps with TRL's GRPOTrainer on CPU.

Runs inside TRL's own venv (bench_e2e.py makes it); imports only TRL, its
dependencies and the benchmark's reward (bench_reward.py, pure Python). Writes one JSON line per
event (step end with its wall-clock time, TRL's logged metrics) to <out>/steps.jsonl.

    <trl-venv>/bin/python scripts/bench/trl_grpo.py <settings.json> <out_dir>
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(settings_path: str, out_dir: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from bench_reward import arithmetic_with_digit_bonus

    s = json.loads(Path(settings_path).read_text())
    out = Path(out_dir)
    rows = [json.loads(line) for line in open(s["prompts_path"])][: s["num_prompts"]]
    dataset = Dataset.from_list([{"prompt": r["prompt"], "label": r["label"]} for r in rows])

    def task_reward(completions, label, **kwargs):
        return [arithmetic_with_digit_bonus(c, gold) for c, gold in zip(completions, label)]

    steps_file = open(out / "steps.jsonl", "w")

    def record(**fields):
        steps_file.write(json.dumps(fields) + "\n")
        steps_file.flush()

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            record(event="step_end", step=state.global_step, time=time.time())

        def on_log(self, args, state, control, logs=None, **kwargs):
            record(event="log", step=state.global_step, logs=logs or {})

    config = GRPOConfig(
        output_dir=str(out / "trainer"), use_cpu=True, bf16=s["bf16"], max_steps=s["steps"],
        per_device_train_batch_size=s["micro_batch"], gradient_accumulation_steps=s["grad_accum"],
        num_generations=s["n"], max_completion_length=s["max_new_tokens"], temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=s["lr"], lr_scheduler_type="constant", warmup_steps=0, beta=s["kl_coef"],
        epsilon=s["clip_low"], epsilon_high=s["clip_high"], loss_type="grpo", scale_rewards="group",
        num_iterations=1, max_grad_norm=1.0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95,
        logging_steps=1, report_to="none", save_strategy="no", seed=s["seed"], dataloader_num_workers=0,
        model_init_kwargs={"dtype": getattr(torch, s["weights_dtype"])}, log_completions=False,
        disable_tqdm=True, use_transformers_continuous_batching=s.get("continuous_batching", False),
        gradient_checkpointing=s["gradient_checkpointing"])
    tok = AutoTokenizer.from_pretrained(s["model_path"])
    trainer = GRPOTrainer(model=s["model_path"], reward_funcs=task_reward, args=config, train_dataset=dataset,
                          processing_class=tok, callbacks=[StepClock()])
    time_generate(trainer.model, record)
    trainer.train()
    record(event="done", torch_threads=torch.get_num_threads(), time=time.time())
    steps_file.close()


def time_generate(model, record) -> None:
    """Record the seconds and new tokens of every `generate` call (TRL's rollout phase);
    TRL calls it on this very module (`unwrap_model_for_generation` on one process)."""
    original = model.generate

    def timed(*args, **kwargs):
        started = time.perf_counter()
        out = original(*args, **kwargs)
        prompt_len = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else args[0].shape[1]
        record(event="generate", seconds=time.perf_counter() - started, tokens=out.shape[0] * (out.shape[1] - prompt_len))
        return out

    model.generate = timed


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

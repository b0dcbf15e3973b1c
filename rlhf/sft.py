"""`rlhf sft`: supervised fine-tuning of a causal LM on prompt/response rows.

    stage = SFTRun(load_config("recipes/sft_tiny.yaml")); stage.setup(); stage.train(); stage.finish()

Loss on response tokens (and EOS) only; padded or packed micro-batches (train.packing, optionally
train.max_tokens_per_micro_batch tokens each); DeepSpeed ZeRO on
`trainer.num_workers` Ray ranks; eval loss on a held-out split; HF export `sft_model/`.
"""
from __future__ import annotations

from rlhf.preference_data import load_sft, sft_batch, train_eval_split
from rlhf.stage_run import StageRun, say
from workers.sft import SFTWorker


class SFTRun(StageRun):
    worker_cls = SFTWorker
    export_name = "sft_model"
    progress_keys = ("sft/loss", "sft/eval_loss", "timing/step")

    row_name = "sequences"

    @property
    def rows_per_step(self) -> int:
        return self.cfg.train.mini_batch_size

    def load_data(self) -> None:
        d = self.cfg.data
        load = lambda path: load_sft(path, d, self.tokenizer)  # noqa: E731
        full = load(d.train_path)
        self.train_set, self.eval_set = train_eval_split(full, d.eval_path, d.eval_size, load)
        say(f"sft rows from {d.train_path}: {full.summary()}; {len(self.train_set)} train, "
            f"{len(self.eval_set)} held out")

    def step(self, indices: list[int]) -> dict:
        # one optimizer step on a padded batch, split over the ranks
        batch = sft_batch(self.train_set, indices, self.tokenizer.pad_token_id)
        metrics = self.group.gather(self.group.call_split("train_step", batch))[0]
        return {"sft/loss": metrics["sft/loss"], "sft/lr": metrics["sft/lr"],
                "sft/grad_norm": metrics["sft/grad_norm"]}

    def evaluate(self) -> dict:
        """Mean NLL per response token over the held-out rows."""
        batch = sft_batch(self.eval_set, range(self.even_rows(len(self.eval_set))), self.tokenizer.pad_token_id)
        nll, tokens = sum(self.group.gather(self.group.call_split("eval_loss", batch))).tolist()
        return {"sft/eval_loss": nll / max(tokens, 1.0)}

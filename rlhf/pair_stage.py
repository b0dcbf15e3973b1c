"""The base of the offline stages trained on preference pairs (`rlhf rm`, `rlhf dpo`)."""
from __future__ import annotations

from rlhf.batch import Batch
from rlhf.preference_data import load_preferences, pair_batch, train_eval_split
from rlhf.stage_run import StageRun, say


class PairStageRun(StageRun):
    """Loads (prompt, chosen, rejected) pairs with a held-out split; a step's batch is
    train.mini_batch_size whole pairs (`pair_batch`)."""

    row_name = "preference pairs"

    @property
    def rows_per_step(self) -> int:
        return self.cfg.train.mini_batch_size

    def load_data(self) -> None:
        d = self.cfg.data
        load = lambda path: load_preferences(path, d, self.tokenizer)  # noqa: E731
        full = load(d.train_path)
        self.train_set, self.eval_set = train_eval_split(full, d.eval_path, d.eval_size, load)
        say(f"preference pairs from {d.train_path}: {full.summary()}; {len(self.train_set)} train, "
            f"{len(self.eval_set)} held out")

    def pairs(self, indices) -> Batch:
        """The training pairs at `indices` (rows 2k / 2k+1: chosen / rejected, so each rank
        of a split gets whole pairs)."""
        return pair_batch(self.train_set, indices, self.tokenizer.pad_token_id)

    def held_out_pairs(self) -> Batch:
        """The held-out pairs, as many as split evenly over the ranks."""
        return pair_batch(self.eval_set, range(self.even_rows(len(self.eval_set))), self.tokenizer.pad_token_id)

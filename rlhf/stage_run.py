"""What `rlhf sft`, `rlhf rm` and `rlhf dpo` share: run directory, one DeepSpeed worker group, the
step loop with periodic held-out evaluation, HF export, cleanup.

A stage subclass gives `load_data()`, `step(indices)` and `evaluate()`; this class
decides their order:  setup() -> train() -> finish() -> cleanup().
No checkpoints or resume: these stages are minutes long on the tiny kit; rerun them.
"""
from __future__ import annotations

import dataclasses
import json
import time
from datetime import datetime
from pathlib import Path

from rlhf.config import to_yaml
from rlhf.data import PromptSampler
from rlhf.metrics import MetricsLogger, print_progress, progress, say
from rlhf.model_paths import check_model, load_tokenizer


class StageRun:
    worker_cls: type           # a workers.trainer_base.DeepSpeedTrainer subclass
    export_name: str           # folder of the HF export in the run directory
    progress_keys: tuple[str, ...] = ()

    def __init__(self, cfg):
        self.cfg = cfg
        self.group = self.placement = self.logger = None
        self.step_index = 0

    # ================================================================ setup
    def setup(self) -> None:
        cfg = self.cfg
        # inputs first: a bad model folder or dataset leaves no run directory behind
        self.model_path = check_model("model.path", cfg.model.path)
        self.tokenizer = load_tokenizer("model.path", self.model_path)
        self.load_data()
        self.sampler = PromptSampler(len(self.train_set), self.rows_per_step, cfg.run.seed, cfg.data.shuffle,
                                     key="train.mini_batch_size", rows=self.row_name)
        self.run_dir = self._run_dir()
        say(f"run directory: {self.run_dir}")
        (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        self._start_group()
        self.logger = MetricsLogger(self.run_dir, cfg.run.trackers,
                                    json.loads(json.dumps(dataclasses.asdict(cfg), default=str)))

    def _run_dir(self) -> Path:
        run = self.cfg.run
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(run.run_dir) if run.run_dir else Path(run.output_dir) / f"{run.name}-{stamp}"
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir

    def _start_group(self) -> None:
        from rlhf.roles import RoleRequest, make_placement
        from workers.group import WorkerGroup

        t, started = self.cfg.trainer, time.time()
        self.placement = make_placement(self.cfg, [RoleRequest(self.worker_cls.role, t.num_workers, t.num_cpus,
                                                               t.num_gpus)])
        self.placement.save(self.run_dir / "placement.json")  # role -> node of each rank
        pg, idx = self.placement.of(self.worker_cls.role)
        with progress(f"starting {t.num_workers} {self.worker_cls.role} rank(s)", total=1, unit="role"):
            self.group = WorkerGroup(self.worker_cls, t.num_workers, num_cpus=t.num_cpus, num_gpus=t.num_gpus,
                                     placement_group=pg, bundle_indices=idx, name=self.worker_cls.role,
                                     init_kwargs=dict(model_path=self.model_path, trainer_cfg=t,
                                                      train_cfg=self.cfg.batch, seed=self.cfg.run.seed,
                                                      dtype=self.cfg.model.dtype))
        say(f"{t.num_workers} {self.worker_cls.role} rank(s) up in {time.time() - started:.0f}s "
            f"(ZeRO-{t.zero_stage})")

    def even_rows(self, n: int) -> int:
        """Largest row count <= n that splits evenly over the ranks (held-out sets)."""
        return n - n % self.group.world_size

    # ================================================================ loop
    def train(self) -> dict:
        run = self.cfg.run
        eval_metrics = self._evaluate()
        self.logger.log(0, eval_metrics)
        self._progress(eval_metrics)
        while self.step_index < run.total_steps:
            started = time.perf_counter()
            metrics = self.step(self.sampler.next_indices())
            metrics["timing/step"] = time.perf_counter() - started
            self.step_index += 1
            if self.step_index == run.total_steps or (run.eval_every and self.step_index % run.eval_every == 0):
                eval_metrics = self._evaluate()
                metrics.update(eval_metrics)
            self.logger.log(self.step_index, metrics)
            self._progress(metrics)
        return eval_metrics

    def _evaluate(self) -> dict:
        with progress("evaluating on the held-out split", total=1, unit="eval"):
            return self.evaluate()

    def _progress(self, metrics: dict) -> None:
        shown = " ".join(f"{k.split('/')[-1]}={metrics[k]:.4f}" for k in self.progress_keys if k in metrics)
        print_progress(f"step {self.step_index}/{self.cfg.run.total_steps} {shown}")

    def finish(self) -> Path | None:
        """HF export (model + tokenizer) of the trained model."""
        if not self.cfg.run.export_hf:
            return None
        out = self.run_dir / self.export_name
        self.group.run_all("save_hf", str(out))
        say(f"{self.export_name} (Hugging Face format): {out}")
        return out

    def cleanup(self) -> None:
        if self.logger:
            self.logger.close()
        if self.group:
            self.group.kill()
        if self.placement:
            self.placement.remove()

    # ================================================================ stage hooks
    rows_per_step: int         # dataset rows (sequences or pairs) per optimizer step
    row_name = "rows"          # what a dataset row is, in messages

    def load_data(self) -> None:
        raise NotImplementedError

    def step(self, indices: list[int]) -> dict:
        raise NotImplementedError

    def evaluate(self) -> dict:
        raise NotImplementedError


def run_to_end(stage):
    """setup -> train -> finish, always cleanup; returns the stage (its run_dir holds the outputs)."""
    try:
        stage.setup()
        stage.train()
        stage.finish()
        return stage
    finally:
        stage.cleanup()


def execute(run, cfg) -> int:
    """CLI entry for any stage (PPO, SFT, RM): start (or join) Ray, `run(cfg)` (returns the
    finished stage), always release the cluster's resources."""
    from rlhf.cli import connect_ray

    started_ray = connect_ray(cfg)
    try:
        say(f"done: {run(cfg).run_dir}")
        return 0
    finally:
        if started_ray:
            import ray

            ray.shutdown()

"""The policy trainer: log-probs of sampled responses and the PPO-family update.

Verbs: compute_logprobs, update, update_on_policy, save / load / save_hf, and (in-process, for the weight
sync) named_weights_for_sync. The loss terms come from rlhf.algorithms; this file only
decides which terms apply and how they are normalised across micro-batches and ranks.
"""
from __future__ import annotations

import torch
from torch import Tensor

from rlhf.algorithms import (
    POLICY_LOSSES,
    entropy_loss,
    kl_loss,
    truncated_is_weights,
)
from rlhf.batch import Batch
from rlhf.config.schema import AlgorithmSection, TrainerSection, TrainSection
from rlhf.trace import traced
from workers import device as dev
from workers.forwards import load_causal_lm, response_logprobs
from workers.trainer_base import DeepSpeedTrainer


class ActorWorker(DeepSpeedTrainer):
    role = "actor"

    def __init__(self, model_path: str, trainer_cfg: TrainerSection, algo_cfg: AlgorithmSection,
                 train_cfg: TrainSection, seed: int = 1, dtype: str = "auto") -> None:
        super().__init__(model_path, trainer_cfg, train_cfg, seed=seed, dtype=dtype)
        self.algo = algo_cfg

    def load_model(self, dtype: torch.dtype):
        return load_causal_lm(self.model_path, dtype)

    @traced("logprobs")
    @torch.no_grad()
    def compute_logprobs(self, batch: Batch, temperature: float = 1.0, top_k: int = -1, top_p: float = 1.0) -> Tensor:
        """Log-probs of this rank's response tokens (no grad, micro-batched, logits / temperature,
        renormalised over the tokens top_k / top_p keep, as the rollout sampled them).

        ZeRO-3: collective, every rank must call it with the same number of rows.
        Shape: batch (b, P+R) -> (b, R) float32 on CPU.
        """
        self.engine.eval()
        return self.infer(batch, lambda mb: response_logprobs(
            self.engine, mb, temperature, device=self.device, top_k=top_k, top_p=top_p, packed=self.packing)[0])

    @traced("logprobs")
    @torch.no_grad()
    def compute_ref_logprobs(self, batch: Batch, temperature: float = 1.0) -> Tensor:
        """With actor.lora: the reference's log-probs (full softmax at `temperature`, as the
        reference role computes them) from the base model, i.e. this model with its
        adapters disabled. ZeRO-3: collective. Shape: batch (b, P+R) -> (b, R) float32 on CPU."""
        if self.lora is None:
            raise ValueError("compute_ref_logprobs needs actor.lora (otherwise the reference role computes them)")
        with self.engine.module.disable_adapter():
            return self.compute_logprobs(batch, temperature=temperature)

    @traced("update")
    def update(self, batch: Batch, temperature: float = 1.0, top_k: int = -1, top_p: float = 1.0) -> dict[str, float]:
        """PPO update on this rank's part of the rollout batch (train.ppo_epochs passes),
        with log-probs of the sampling distribution (temperature, top_k, top_p).

        Needs batch.old_logprobs and batch.advantages; batch.ref_logprobs if the KL loss
        is on (algorithm.kl.loss_coef > 0); batch.rollout_logprobs if truncated IS is on
        (algorithm.tis_cap). Returns the same metrics on every rank.
        """
        if batch.old_logprobs is None:
            raise ValueError("actor update needs batch.old_logprobs (or call update_on_policy)")
        return self._policy_update(batch, dict(temperature=temperature, top_k=top_k, top_p=top_p))

    @traced("update")
    def update_on_policy(self, batch: Batch, temperature: float = 1.0, top_k: int = -1,
                         top_p: float = 1.0) -> tuple[dict[str, float], Tensor]:
        """`update` without a separate old-log-prob pass, for a step that is on-policy:
        one epoch and one mini-batch, so the weights that score the tokens in the
        update's forward are the ones a `compute_logprobs` call would use. The old
        log-probs are that forward's, detached (the first PPO ratio is exactly 1).

        Returns (metrics, this rank's old log-probs (b, R)) for the KL and drift metrics.
        """
        ranks_rows = self.train_cfg.micro_batch_size * self.grad_accum
        if self.train_cfg.ppo_epochs != 1 or batch.size != ranks_rows:
            raise ValueError(f"update_on_policy needs train.ppo_epochs=1 and one mini-batch per step; got "
                             f"{self.train_cfg.ppo_epochs} epoch(s) and {batch.size} rows on this rank for "
                             f"mini-batches of {ranks_rows}")
        scored: list[Tensor] = []
        metrics = self._policy_update(batch, dict(temperature=temperature, top_k=top_k, top_p=top_p), scored=scored)
        old = torch.empty(batch.response_mask.shape)
        old[torch.cat(self.trained_rows)] = torch.cat(scored)  # micro-batches may be any rows (token budget)
        return metrics, old

    def _policy_update(self, batch: Batch, sampling: dict, scored: list[Tensor] | None = None) -> dict[str, float]:
        """The PPO-family update. `sampling`: temperature, top_k, top_p of the rollout.
        `scored` given: old log-probs are the forward's own (detached), appended to it
        per micro-batch."""
        algo = self.algo
        kl_coef = algo.kl.loss_coef
        if batch.advantages is None:
            raise ValueError("actor update needs batch.advantages")
        if kl_coef > 0 and batch.ref_logprobs is None:
            raise ValueError("the KL loss (algorithm.kl.loss_coef > 0) needs batch.ref_logprobs")
        if algo.tis_cap is not None and batch.rollout_logprobs is None:
            raise ValueError("truncated IS (algorithm.tis_cap) needs batch.rollout_logprobs")
        policy_loss = POLICY_LOSSES.get(algo.policy_loss)

        def loss_fn(mb: Batch, n_tokens: Tensor, n_seqs: Tensor, stats) -> Tensor:
            mask = mb.response_mask.to(self.device)
            agg = dict(agg_mode=algo.loss_agg_mode, global_token_count=n_tokens, global_seq_count=n_seqs,
                       norm_length=mb.response_len)
            logprobs, entropy = response_logprobs(self.engine, mb, device=self.device, **sampling, entropy=True,
                                                  entropy_grad=algo.entropy_coef != 0, packed=self.packing)
            if scored is None:
                old = mb.old_logprobs.to(self.device)
            else:
                old = logprobs.detach()
                scored.append(old.float().cpu())
            is_weights = None
            if algo.tis_cap is not None:
                is_weights = truncated_is_weights(old, mb.rollout_logprobs.to(self.device), mask, algo.tis_cap)
                tokens = mask.sum().clamp_min(1)
                stats.add("mean", "actor/is_weight_mean", is_weights.sum() / tokens)
                stats.add("mean", "actor/is_weight_capped_frac",
                          ((is_weights >= algo.tis_cap * (1 - 1e-6)) * mask).sum() / tokens)
            pg_loss, pg_metrics = policy_loss(
                logprobs, old, mb.advantages.to(self.device), mask, clip_low=algo.clip_low,
                clip_high=algo.clip_high, dual_clip=algo.dual_clip, is_weights=is_weights, **agg)
            loss = pg_loss
            ent = entropy_loss(entropy, mask, **agg)
            if algo.entropy_coef:
                loss = loss - algo.entropy_coef * ent
            if kl_coef > 0:
                kl = kl_loss(logprobs, mb.ref_logprobs.to(self.device), mask, algo.kl.loss_estimator, **agg)
                loss = loss + kl_coef * kl
                stats.add("share", "actor/kl_loss", kl.detach())
            stats.add("share", "actor/pg_loss", pg_loss.detach())
            stats.add("share", "actor/entropy", ent.detach())
            for name, value in pg_metrics.items():
                stats.add("mean", f"actor/{name}", value)
            return loss

        return self._train(batch, self.train_cfg.ppo_epochs, loss_fn)

    # ---------------------------------------------------------------- weight sync
    def device_report(self) -> dict:
        """Where this rank holds its weights (`workers.device.DeviceReport` fields): the
        input of the sync's transport choice, gathered from every rank."""
        import dataclasses

        import ray

        return dataclasses.asdict(dev.device_report(ray.get_runtime_context().get_node_id(), self.device))

    def connect_rollout(self, rollout_handles: list, transport: str, bucket_bytes: int, dtype: str,
                        senders: list[dict] | None = None, lora_merge: bool = False) -> str:
        """Open the weight transport to the rollout engines; returns its name (rank 0).
        `senders`: every rank's `device_report`, so all ranks choose alike. Between GPUs
        every rank takes part (vLLM's engines: IPC hands each engine the copy of the rank
        on its GPU); otherwise rank 0 alone sends (shared memory, gloo).
        With actor.lora and not `lora_merge`, only the adapter travels (Ray objects, rank 0:
        `push_weights`); with `lora_merge`, merged full tensors take the transports above."""
        import ray

        from workers.vllm_transfer import VllmWeightSender, backend_for, module_metas
        from workers.weight_sync import WeightSender, choose_sync

        self.sender = self.gpu_sender = None
        self.rollout_handles = rollout_handles
        self.adapter_sync = self.lora is not None and not lora_merge
        if self.adapter_sync:
            return "lora adapter"
        reports = [dev.DeviceReport(**r) for r in senders] if senders else None
        infos = ray.get([h.engine_info.remote() for h in rollout_handles])
        sync_dtype, name = choose_sync(infos, transport, dtype, reports, self.device)
        everyone = (reports or [dev.device_report("", self.device)]) + [
            dev.DeviceReport(**d) for info in infos for d in info["devices"]]
        backend = backend_for(name, [info.get("weight_transfer") for info in infos],
                              on_gpus=all(p.kind == "cuda" for p in everyone))
        if backend is not None:
            self.gpu_sender = VllmWeightSender(backend, self.rank, rollout_handles, infos,
                                               module_metas(self.engine.module), bucket_bytes, sync_dtype)
            self.gpu_sender.connect(self.named_weights_for_sync, self.device, copy=self.cfg.zero_stage == 3)
            return name if self.rank == 0 else ""
        if self.rank != 0:
            return ""
        self.sender = WeightSender(name, bucket_bytes, sync_dtype)
        return self.sender.connect(rollout_handles, self.device, infos=infos)

    def shutdown(self) -> bool:
        for sender in (getattr(self, "sender", None), getattr(self, "gpu_sender", None)):
            if sender is not None:
                sender.close()
        return True

    @traced("sync")
    def push_weights(self, version: int) -> dict:
        """Gather full HF-named weights (collective under ZeRO-3: every rank calls this)
        and stream them to the engines. Returns the sync stats on rank 0."""
        if getattr(self, "gpu_sender", None) is not None:
            stats = self.gpu_sender.send(version)  # every rank: iterates its weights in vLLM's engine
            # hybrid engine: hand the blocks torch cached during the update back to the GPU
            # before vLLM wakes its KV cache on it
            torch.cuda.empty_cache()
            return stats
        if self.adapter_sync:
            return self._push_adapter(version)
        weights = self.hf_weights()  # LoRA: merged into the base weights
        if self.sender is None:
            for _ in weights:  # take part in the ZeRO-3 gathers
                pass
            return {}
        return self.sender.send(weights, version)

    def _push_adapter(self, version: int) -> dict:
        """Send the adapter to every engine, which serves it as LoRA version `version`
        (`RolloutWorker.load_adapter`). Collective under ZeRO-3; stats on rank 0."""
        import time

        import ray

        from rlhf.lora import adapter_config_dict

        start = time.perf_counter()
        tensors = self.adapter_weights()
        if self.rank != 0:
            return {}
        config = adapter_config_dict(self.engine.module, self.model_path)
        ray.get([h.load_adapter.remote(tensors, config, version) for h in self.rollout_handles])
        seconds = time.perf_counter() - start
        nbytes = sum(t.nbytes for t in tensors.values())
        return {"sync/seconds": seconds, "sync/bytes": nbytes, "sync/GBps": nbytes / max(seconds, 1e-9) / 1e9,
                "sync/tensors": len(tensors)}

"""The single controller: brings up the roles and runs PPO steps in numbered phases.

    trainer = PPOTrainer(load_config("recipes/ppo_tiny.yaml"))
    trainer.setup(); trainer.train(); trainer.cleanup()

This is the only code that knows the order of a step. GRPO / RLOO / REINFORCE++
are the same step with the critic phases skipped (algorithm.adv_estimator).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from datetime import datetime
from pathlib import Path

import torch

from rlhf import checkpoint as ckpt
from rlhf.algorithms import ADV_ESTIMATORS, AdvantageInputs, make_kl_controller, masked_mean
from rlhf.algorithms import overlong_penalty, token_rewards_with_kl
from rlhf.batch import Batch
from rlhf.config import RunConfig, to_yaml
from rlhf.data import PromptSampler, PromptSet, load_prompts
from rlhf.errors import NumericsError
from rlhf.faults import nonfinite_fields
from rlhf.agent.trajectory import trajectory_metrics
from rlhf.generation import Generated, collect, generate, launch, reward_columns
from rlhf.group_filter import GroupFilter, SampledRound
from rlhf.metrics import MemoryWatch, MetricsLogger, PhaseTimer, print_progress, progress, progress_line, say
from rlhf.model_paths import check_model, load_tokenizer
from rlhf.overlap import RolloutOverlap
from rlhf.trace import TraceRecorder


class PPOTrainer:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.timer = PhaseTimer()
        self.step_index = 0
        self.weight_version = 0
        self.roles = None          # rlhf.roles.PPORoles once setup starts them
        self.rewards = None
        self.logger = None
        self.memory = MemoryWatch()
        self.bad_steps = 0         # steps skipped for NaN/Inf (run.max_bad_steps)
        # rollout.mode one_step / async: batches generated ahead while the trainer trains
        self.overlap = RolloutOverlap(cfg.rollout.mode, cfg.rollout.max_staleness, cfg.run.total_steps,
                                      launch=self._launch_ahead, collect=self._collect_ahead,
                                      generate=lambda step: self._sample_round(0))

    rollout = property(lambda self: self.roles.rollout)
    actor = property(lambda self: self.roles.actor)
    critic = property(lambda self: self.roles.critic)
    reference = property(lambda self: self.roles.reference)
    reward_model = property(lambda self: self.roles.reward_model)

    # ================================================================ setup
    def setup(self) -> None:
        cfg = self.cfg
        # inputs first: a bad model folder or dataset leaves no run directory behind
        self.paths = self._resolve_models()
        self._check_lora()
        self.tokenizer = load_tokenizer("model.policy", self.paths["policy"])
        tools = self._prompt_tools()
        self.train_set = load_prompts(cfg.data.train_path, cfg.data, self.tokenizer, tools=tools)
        self.eval_set = (load_prompts(cfg.data.eval_path, cfg.data, self.tokenizer, limit=cfg.data.eval_size,
                                      tools=tools) if cfg.data.eval_path else None)
        say(f"prompts: {len(self.train_set)} train ({self.train_set.dropped_too_long} dropped over "
            f"{cfg.data.max_prompt_tokens} tokens), {len(self.eval_set) if self.eval_set else 0} eval")
        self.sampler = PromptSampler(len(self.train_set), cfg.train.prompts_per_step, cfg.run.seed, cfg.data.shuffle)
        self.kl_ctrl = make_kl_controller(cfg.algorithm.kl.controller, **self._kl_kwargs())
        self.rewards = make_reward_manager(cfg)
        self.run_dir, resume_from = self._run_dir_and_resume()
        say(f"run directory: {self.run_dir}")
        (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        from rlhf.roles import PPORoles

        self.roles = PPORoles(cfg)
        self.roles.start(self.paths, self.run_dir)
        start_step = self._resume(resume_from) if resume_from else 0
        self.step_index = start_step
        # resuming (even from no checkpoint at all): lines of undone steps are set aside
        rewind_to = start_step if resume_from else (-1 if cfg.run.resume == "auto" else None)
        self.logger = MetricsLogger(self.run_dir, cfg.run.trackers, dataclasses.asdict(cfg), resume_step=rewind_to)
        self.trace = TraceRecorder(self.run_dir, resume_step=rewind_to)  # trace.json: the step timeline

    def _check_lora(self) -> None:
        """actor.lora / critic.lora against the models (rlhf.lora.check_lora), before any worker."""
        from rlhf.lora import check_lora

        if self.cfg.actor.lora.enabled:
            check_lora(self.cfg.actor.lora, self.paths["policy"], "actor.lora")
        if self.cfg.critic.lora.enabled and self.cfg.algorithm.uses_critic:
            check_lora(self.cfg.critic.lora, self.paths["critic"], "critic.lora", value_head=True)

    def _prompt_tools(self) -> list[dict] | None:
        """Agentic runs: the JSON schemas of the tools the prompts describe (rollout.agent.tools_in_prompt)."""
        agent = self.cfg.rollout.agent
        if not (agent.enabled and agent.tools_in_prompt):
            return None
        from rlhf.agent.env import tool_schemas

        return tool_schemas(agent)

    def _kl_kwargs(self) -> dict:
        kl = self.cfg.algorithm.kl
        if kl.controller == "adaptive":
            return {"init_coef": kl.coef, "target": kl.target, "horizon": kl.horizon}
        return {"coef": kl.coef}

    def _run_dir_and_resume(self) -> tuple[Path, Path | None]:
        run = self.cfg.run
        if run.resume not in ("never", "auto"):
            path = Path(run.resume)
            if not (path / ckpt.MARKER).exists():
                raise FileNotFoundError(f"run.resume={run.resume}: not a complete checkpoint folder")
            return path.parent.parent, path
        if run.run_dir:
            run_dir = Path(run.run_dir)
        elif run.resume == "auto" and (previous := _latest_run(Path(run.output_dir), run.name)):
            run_dir = previous
        else:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            run_dir = Path(run.output_dir) / f"{run.name}-{stamp}"
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir, ckpt.latest(run_dir) if run.resume == "auto" else None

    def _resolve_models(self) -> dict[str, str]:
        """Role -> checked local model folder (rlhf.model_paths), keyed errors."""
        m = self.cfg.model
        refs = {"policy": ("model.policy", m.policy), "reference": ("model.reference", m.reference),
                "critic": ("model.critic", m.critic), "reward_model": ("model.reward_model", m.reward_model)}
        paths = {role: check_model(key, ref) for role, (key, ref) in refs.items() if ref}
        paths.setdefault("reference", paths["policy"])
        paths.setdefault("critic", paths.get("reward_model", paths["policy"]))
        paths.setdefault("reward_model", None)
        return paths

    # ================================================================ one PPO step
    def step(self) -> dict:
        cfg, t, metrics = self.cfg, self.timer, {}
        step_start = time.perf_counter()
        # step 1-2. generate n responses per prompt (vLLM) and score them; algorithm.filter_groups:
        # more rounds until enough groups have rewards that differ (DAPO dynamic sampling)
        sampled = self._sample_and_score()
        rows, batch, texts, reward_metrics = sampled.rows, sampled.batch, sampled.texts, sampled.metrics
        # step 3. trainer-side log-probs, reference log-probs and values, overlapped
        with t("logprobs_values"):
            self.roles.share_cores(None if self._update_scores_old() else self.actor, self.reference, self.critic)
            batch = self._logprobs_and_values(batch)
        # step 4. KL penalty and advantages (pure functions of the batch)
        with t("advantages"):
            batch, adv_metrics = self._advantages(batch)
        # step 5-7. critic and actor updates, weight sync; skipped when the batch has NaN/Inf
        nonfinite = nonfinite_fields(batch)
        if nonfinite:
            self._bad_step(f"NaN/Inf in the batch ({nonfinite}): updates skipped")
        else:
            update_metrics, batch = self._update_and_sync(batch)
            metrics.update(update_metrics)
        kl_metrics = self._kl_metrics(batch)
        if not nonfinite:
            self.kl_ctrl.update(kl_metrics["kl/mean"], n_steps=batch.size)
            skipped = {k: v for k, v in metrics.items() if k.endswith("/skipped_steps") and v}
            if skipped:
                self._bad_step(f"NaN/Inf gradients: optimizer steps skipped {skipped} (" + ", ".join(
                    f"{k}={metrics[k]:.4g}" for k in sorted(metrics) if k.endswith(("/grad_norm", "_loss"))) + ")")
        # step 8. metrics
        metrics.update(reward_metrics, **adv_metrics, **kl_metrics)
        metrics["train/skipped"] = float(bool(nonfinite))
        metrics["train/critic_warmup"] = float(self._critic_warmup())
        metrics["train/bad_steps"] = float(self.bad_steps)
        metrics.update(self._rollout_metrics(batch))
        metrics["timing/step"] = time.perf_counter() - step_start
        metrics.update(self.timer.pop())
        metrics["perf/tokens_per_s"] = float(batch.response_mask.sum()) / metrics["timing/step"]
        if "timing/generate" in metrics:  # one_step / async: generation ran during earlier steps
            metrics["perf/generate_tokens_per_s"] = float(batch.response_mask.sum()) / metrics["timing/generate"]
        metrics.update(self.memory.sample())
        if cfg.run.log_samples_every and self.step_index % cfg.run.log_samples_every == 0:
            self._log_samples(rows, texts, batch.scores)
        return metrics

    def _sample_and_score(self) -> SampledRound:
        """One round of train.prompts_per_step prompts, or with algorithm.filter_groups as many
        as it takes (at most max_gen_batches) to fill the step with informative groups;
        rollout.mode one_step / async: the batch generated ahead (rlhf/overlap.py)."""
        cfg, algo = self.cfg, self.cfg.algorithm
        if self.overlap.enabled:
            return self.overlap.batch_for(self.step_index, self.weight_version)
        if not algo.filter_groups:
            return self._sample_round(0)
        keep = GroupFilter(cfg.train.prompts_per_step, cfg.rollout.n, algo.max_gen_batches,
                           self.tokenizer.pad_token_id)
        while not keep.done:
            keep.add(self._sample_round(keep.rounds))
        sampled = keep.result()
        if sampled.metrics["rollout/filter_cap_hit"]:
            say(f"step {self.step_index + 1}: only {keep.informative} of {cfg.train.prompts_per_step} groups had "
                f"rewards that differ after algorithm.max_gen_batches={algo.max_gen_batches} rounds; the rest "
                f"of the batch are zero-advantage groups")
        return sampled

    def _launch_ahead(self, step: int):
        """Start step `step`'s batch on the engines with the current weights (rlhf/overlap.py)."""
        cfg = self.cfg
        rows = self.train_set.rows(self.sampler.next_indices())
        self.roles.share_cores(self.rollout)
        seed_key = ("train", step)  # the seeds the sync mode would use
        return rows, launch(cfg, self.rollout, rows, cfg.rollout.n, cfg.rollout.temperature, seed_key)

    def _collect_ahead(self, launched) -> SampledRound:
        rows, launched = launched
        with self.timer("wait_rollout"):  # the trainer is idle here: what the overlap did not hide
            gen = collect(self.cfg, self.rollout, self.tokenizer, launched)
        with self.timer("reward"):
            scores, metrics = self._score(gen, rows, self.cfg.rollout.n)
        return SampledRound(rows, gen.batch.replace(scores=scores), gen.texts, gen.finish, metrics)

    def _sample_round(self, round_index: int) -> SampledRound:
        cfg, t, n = self.cfg, self.timer, self.cfg.rollout.n
        rows = self.train_set.rows(self.sampler.next_indices())  # checkpoints save the sampler: resume sees every round
        # step 1. generate n responses per prompt with the current policy (vLLM)
        with t("generate"):
            self.roles.share_cores(self.rollout)
            seed_key = ("train", self.step_index) + ((round_index,) if round_index else ())
            gen = generate(cfg, self.rollout, self.tokenizer, rows, n, cfg.rollout.temperature, seed_key)
        # step 2. score them: reward functions (process pool), the reward model, the environment
        with t("reward"):
            self.roles.share_cores(self.reward_model)
            scores, metrics = self._score(gen, rows, n)
        return SampledRound(rows, gen.batch.replace(scores=scores), gen.texts, gen.finish, metrics)

    def _update_and_sync(self, batch: Batch) -> tuple[dict, Batch]:
        """Returns the metrics and the batch, with the old log-probs when the update scored them.
        During the critic warm-up (train.critic_warmup_steps) only the critic learns: the
        policy, and so the rollout's weights, stay as they are."""
        t, sampling = self.timer, self._sampling()
        if self._critic_warmup():
            with t("update"):
                self.roles.share_cores(self.critic)
                critic_metrics = self.critic.gather(self.critic.call_split("update", batch))[0]
            return critic_metrics, batch
        # step 5+6. critic and actor updates, concurrently (different workers)
        # hybrid engine: vLLM frees its GPU memory for training; level 2 drops the weights
        # too, since the sync below overwrites them anyway (not an adapter-only sync: level 1
        # keeps the base weights in host memory)
        adapter_sync = self.cfg.actor.lora.enabled and not self.cfg.sync.lora_merge
        sleep_metrics = self._rollout_memory("sleep", level=1 if adapter_sync else 2)
        with t("update"):
            self.roles.share_cores(self.actor, self.critic)
            critic_refs = self.critic.call_split("update", batch) if self.critic else None
            if batch.old_logprobs is None:  # on-policy: the update's forward scores them
                refs = self.actor.call_split("update_on_policy", batch, **sampling)
                results = self.actor.gather(refs)
                actor_metrics = results[0][0]
                batch = batch.replace(old_logprobs=self.actor.rows_in_order(refs, [old for _, old in results]))
            else:
                actor_metrics = self.actor.gather(self.actor.call_split("update", batch, **sampling))[0]
            critic_metrics = self.critic.gather(critic_refs)[0] if critic_refs else {}
        # step 7. weight sync: trainer shards -> full tensors -> buckets -> vLLM (one_step: once
        # the engines are done with the next step's batch; async: without waiting for it)
        self.overlap.before_sync()
        self._rollout_memory("wake_up", tags=["weights"])  # sync into the weights before the KV cache returns
        with t("sync"):
            sync_metrics = self._sync_weights()
        self._rollout_memory("wake_up", tags=["kv_cache"])
        return {**actor_metrics, **critic_metrics, **sync_metrics, **sleep_metrics}, batch

    def _critic_warmup(self) -> bool:
        return self.step_index < self.cfg.train.critic_warmup_steps

    def _update_scores_old(self) -> bool:
        """The actor update will score the old log-probs itself (RunConfig.old_logprobs_from_update),
        which it cannot while it is not updated (critic warm-up)."""
        return self.cfg.old_logprobs_from_update and not self._critic_warmup()

    def _bad_step(self, why: str) -> None:
        """Count a NaN/Inf step; stop the run once more than run.max_bad_steps were seen."""
        self.bad_steps += 1
        limit = self.cfg.run.max_bad_steps
        if self.bad_steps > limit:
            raise NumericsError(f"step {self.step_index + 1}: {why}. That is {self.bad_steps} bad step(s), over "
                                f"run.max_bad_steps={limit}: stopping. The last complete checkpoint is "
                                f"{ckpt.latest(self.run_dir)}; lower the learning rates or check the rewards")
        say(f"step {self.step_index + 1}: {why} (bad step {self.bad_steps} of at most {limit})")

    # ---------------------------------------------------------------- phases
    def _score(self, gen: Generated, rows: PromptSet, n: int):
        cfg, batch, finish = self.cfg, gen.batch, gen.finish
        rm_ref = self.reward_model.call_split("score", batch) if self.reward_model else None
        scores, metrics = self._function_scores(gen, rows, n, "reward/")
        if rm_ref is not None:
            rm_scores = self.reward_model.gather_cat(rm_ref).float()
            scores = scores + cfg.reward.model_weight * rm_scores
            metrics["reward/model"] = float(rm_scores.mean())
        if cfg.algorithm.overlong_buffer:
            penalty = overlong_penalty(batch.response_mask.sum(-1), cfg.response_budget,
                                       cfg.algorithm.overlong_buffer, cfg.algorithm.overlong_penalty)
            scores = scores + penalty
            metrics["reward/overlong_penalty"] = float(penalty.mean())
        if gen.trajectories is not None:  # agentic: the loop's counts
            metrics.update(trajectory_metrics(gen.trajectories))
        metrics["rollout/truncated_frac"] = sum(f in ("length", "max_turns") for f in finish) / len(finish)
        return scores, metrics

    def _function_scores(self, gen: Generated, rows: PromptSet, n: int, prefix: str):
        """The reward functions' weighted sum plus, in agentic runs, the environment's
        rewards (rollout.agent.env_reward_weight); their metrics under `prefix`."""
        scores, metrics = torch.zeros(len(gen.texts)), {}
        if self.rewards is not None:  # agentic runs may score with the environment alone
            expand = lambda xs: [x for x in xs for _ in range(n)]  # noqa: E731
            result = self.rewards.score(expand(rows.prompts), gen.texts, expand(rows.labels),
                                        reward_columns(rows, gen.batch, n))
            scores = torch.tensor(result.scores, dtype=torch.float32)
            metrics = {f"{prefix}{k}": sum(v) / len(v) for k, v in result.components.items()}
            metrics.update({f"{prefix}{k}": _nanmean(v) for k, v in result.extra.items()})
            metrics[f"{prefix}errors"] = result.errors
        if gen.trajectories is not None:
            env_rewards = torch.tensor([t["env_reward"] for t in gen.trajectories], dtype=torch.float32)
            scores = scores + self.cfg.rollout.agent.env_reward_weight * env_rewards
            metrics[f"{prefix}environment"] = float(env_rewards.mean())
        return scores, metrics

    def _sampling(self) -> dict:
        """How the rollout sampled: the actor's log-probs use the same distribution. The
        reference's stay those of the full softmax at the temperature (the KL is then that
        of the sampling policy to the untruncated reference)."""
        r = self.cfg.rollout
        return {"temperature": r.temperature, "top_k": r.top_k, "top_p": r.top_p}

    def _logprobs_and_values(self, batch: Batch) -> Batch:
        """Old (unless the update scores them: `_update_scores_old`) and reference
        log-probs, and values."""
        temp = self.cfg.rollout.temperature
        old_ref = None
        if not self._update_scores_old():
            old_ref = self.actor.call_split("compute_logprobs", batch, **self._sampling())
        # actor.lora: the reference is the actor's base model (adapters disabled, rlhf.roles)
        ref_group = self.reference or self.actor
        verb = "compute_logprobs" if self.reference else "compute_ref_logprobs"
        ref_ref = ref_group.call_split(verb, batch, temperature=temp)
        val_ref = self.critic.call_split("compute_values", batch) if self.critic else None
        return batch.replace(old_logprobs=self.actor.gather_cat(old_ref) if old_ref is not None else None,
                             ref_logprobs=ref_group.gather_cat(ref_ref),
                             values=self.critic.gather_cat(val_ref) if val_ref else None)

    def _advantages(self, batch: Batch):
        algo = self.cfg.algorithm
        mask = batch.response_mask
        coef = self.kl_ctrl.value if algo.kl_in_reward else 0.0
        token_rewards, _ = token_rewards_with_kl(batch.scores, mask, batch.old_logprobs, batch.ref_logprobs,
                                                 kl_coef=coef, estimator=algo.kl.estimator)
        inputs = AdvantageInputs(token_rewards=token_rewards, scores=batch.scores, response_mask=mask,
                                 group_ids=batch.group_ids, values=batch.values, gamma=algo.gamma,
                                 lam=algo.lam, norm_adv_by_std=algo.norm_adv_by_std)
        advantages, returns = ADV_ESTIMATORS.get(algo.adv_estimator)(inputs)
        metrics = {"rollout/advantage_mean": float(masked_mean(advantages, mask)),
                   "rollout/return_mean": float(masked_mean(returns, mask))}
        return batch.replace(token_rewards=token_rewards, advantages=advantages, returns=returns), metrics

    def _kl_metrics(self, batch: Batch) -> dict:
        """KL(policy || reference) of the sampled tokens under the step's old log-probs
        (NaN when a skipped step never computed them)."""
        # the coefficient that reached the reward: 0 when the KL is not in it (kl.loss_coef is the loss's)
        metrics = {"kl/coef": float(self.kl_ctrl.value) if self.cfg.algorithm.kl_in_reward else 0.0}
        if batch.old_logprobs is None:
            return {**metrics, "kl/mean": math.nan, "kl/token_mean": math.nan}
        mask = batch.response_mask
        _, kl = token_rewards_with_kl(batch.scores, mask, batch.old_logprobs, batch.ref_logprobs,
                                      estimator=self.cfg.algorithm.kl.estimator)
        return {**metrics, "kl/mean": float((kl * mask).sum(-1).mean()), "kl/token_mean": float(masked_mean(kl, mask))}

    def _rollout_memory(self, verb: str, **kwargs) -> dict:
        """vLLM sleep mode around training (rlhf.roles.rollout_sleeps; a no-op on CPU).
        A sleep reports `rollout/sleep_freed_gib`: the least GPU memory an engine freed."""
        from rlhf.roles import rollout_sleeps

        if not rollout_sleeps(self.cfg) or self.overlap.enabled:  # one_step / async: engines are busy
            return {}
        results = self.rollout.run_all(verb, **kwargs)
        if verb == "sleep" and all(r["slept"] for r in results):
            return {"rollout/sleep_freed_gib": min(r["freed_gib"] for r in results)}
        return {}

    def _sync_weights(self) -> dict:
        self.weight_version += 1
        stats = self.actor.run_all("push_weights", self.weight_version)[0]
        return {k: float(v) for k, v in stats.items() if k.startswith("sync/")}

    def _rollout_metrics(self, batch: Batch) -> dict:
        mask = batch.response_mask
        old = batch.old_logprobs if batch.old_logprobs is not None else torch.full_like(mask, math.nan)
        diff = (batch.rollout_logprobs - old).abs() * mask
        return {"rollout/reward_mean": float(batch.scores.mean()), "rollout/reward_std": float(batch.scores.std()),
                "rollout/response_length": float(mask.sum(-1).mean()),
                "rollout/logprob_diff_mean": float(diff.sum() / mask.sum().clamp_min(1)),
                "rollout/logprob_diff_max": float(diff.max()),
                "rollout/weight_version": float(batch.weight_version.float().mean())}

    # ================================================================ evaluation
    def evaluate(self) -> dict:
        if self.eval_set is None:
            return {}
        cfg = self.cfg
        # the same seeds at every evaluation: sampled evaluations differ only by the policy
        with progress("evaluating", total=2, unit="phase") as bar:
            bar.set_postfix_str(f"generating {len(self.eval_set)} answers")
            gen = generate(cfg, self.rollout, self.tokenizer, self.eval_set, 1, cfg.rollout.eval_temperature, ("eval",))
            batch = gen.batch
            bar.update()
            bar.set_postfix_str("scoring")
            scores, reward_metrics = self._function_scores(gen, self.eval_set, 1, "eval/reward/")
            bar.update()
        out = {"eval/reward_mean": float(scores.mean()), "eval/pass_rate": float((scores >= 1.0 - 1e-6).float().mean()),
               "eval/response_length": float(batch.response_mask.sum(-1).mean())}
        out.update({k: v for k, v in reward_metrics.items() if k != "eval/reward/errors"})
        if gen.trajectories is not None:
            agent = trajectory_metrics(gen.trajectories)
            out.update({f"eval/{k}": agent[k] for k in ("agent/tool_calls_mean", "agent/format_error_rate",
                                                         "agent/turns_mean")})
        return out

    # ================================================================ loop
    def train(self) -> dict:
        cfg = self.cfg.run
        eval_metrics = {}
        if self.step_index == 0 and self.eval_set is not None:
            with self.timer.span("eval"):
                eval_metrics = self.evaluate()
            self.logger.log(0, eval_metrics)
            print_progress(progress_line(0, cfg.total_steps, eval_metrics))
        while self.step_index < cfg.total_steps:
            step_began = time.time()
            metrics = self.step()
            self.step_index += 1
            last = self.step_index == cfg.total_steps
            if self.eval_set is not None and (last or (cfg.eval_every and self.step_index % cfg.eval_every == 0)):
                with self.timer.span("eval"):
                    eval_metrics = self.evaluate()
                metrics.update(eval_metrics)
            self.logger.log(self.step_index, metrics)
            print_progress(progress_line(self.step_index, cfg.total_steps, metrics))
            if last or (cfg.save_every and self.step_index % cfg.save_every == 0):
                with self.timer.span("checkpoint"):
                    self.save_checkpoint()
            self.trace.end_step(self.step_index, step_began, self.timer.take_spans(), self.roles.groups())
        return eval_metrics

    def finish(self) -> None:
        """Final HF export and plots."""
        run = self.cfg.run
        lora = self.cfg.actor.lora
        if run.export_hf and lora.enabled:
            out = self.run_dir / "final_adapter"
            self.actor.run_all("save_adapter", str(out))
            say(f"final policy adapter (peft format, base {self.paths['policy']}): {out}")
        if run.export_hf and (not lora.enabled or lora.export_merged):
            out = self.run_dir / "final_policy"
            self.actor.run_all("save_hf", str(out))  # actor.lora: the adapter merged into the base
            say(f"final policy (Hugging Face format): {out}")
        if run.plots:
            from rlhf.plots import plot_run

            say(f"plots: {plot_run(self.run_dir)}")
        say(self.memory.report(self.run_dir))

    # ================================================================ checkpoints
    def save_checkpoint(self) -> Path:
        staging = ckpt.staging_dir(self.run_dir, self.step_index)
        refs = self.actor.call_all("save", str(staging / "actor"))
        critic_refs = self.critic.call_all("save", str(staging / "critic")) if self.critic else None
        self.actor.gather(refs)
        if critic_refs:
            self.critic.gather(critic_refs)
        self.overlap.drain()
        self.overlap.save(staging)  # one_step / async: the batches of the next steps, with their versions
        state = {"step": self.step_index, "weight_version": self.weight_version, "bad_steps": self.bad_steps,
                 "kl_controller": self.kl_ctrl.state_dict(), "sampler": self.sampler.state_dict(),
                 **ckpt.rng_state()}
        final = ckpt.commit(staging, state, self.cfg.run.keep_checkpoints)
        say(f"checkpoint: {final}")
        return final

    def _resume(self, path: Path) -> int:
        state = ckpt.read_state(path)
        refs = self.actor.call_all("load", str(path / "actor"))
        if self.critic:
            self.critic.gather(self.critic.call_all("load", str(path / "critic")))
        self.actor.gather(refs)
        self.kl_ctrl.load_state_dict(state["kl_controller"])
        self.overlap.load(path, state["step"])
        self.sampler.load_state_dict(state["sampler"])
        ckpt.restore_rng(state)
        self.weight_version = state["weight_version"] - 1
        self.bad_steps = state.get("bad_steps", 0)
        self._sync_weights()  # the rollout engines start from the checkpoint's policy
        say(f"resumed from {path} at step {state['step']}")
        return state["step"]

    # ================================================================ misc
    def _log_samples(self, rows: PromptSet, texts: list[str], scores) -> None:
        n = self.cfg.rollout.n
        lines = [f"  {rows.prompts[i // n]!r} -> {texts[i]!r} (score {float(scores[i]):.2f})"
                 for i in range(0, min(len(texts), 3 * n), n)]
        say(f"samples at step {self.step_index}:\n" + "\n".join(lines))
        with open(self.run_dir / "samples.jsonl", "a") as handle:
            for i in range(len(texts)):
                handle.write(json.dumps({"step": self.step_index, "prompt": rows.prompts[i // n],
                                         "response": texts[i], "score": float(scores[i])}) + "\n")

    def cleanup(self) -> None:
        if self.logger:
            self.logger.close()
        if self.rewards:
            self.rewards.close()
        if self.roles:
            self.roles.kill()


# ==================================================================== helpers
def make_reward_manager(cfg: RunConfig):
    """The reward functions' manager; None when there are none (an environment scores)."""
    from rewards import RewardManager, RewardSpec

    if not cfg.reward.functions:
        return None
    specs = [RewardSpec(name=f.name, fn=f.fn, weight=f.weight, kwargs=dict(f.kwargs)) for f in cfg.reward.functions]
    return RewardManager(specs, num_workers=cfg.reward.num_workers, timeout_s=cfg.reward.timeout_s,
                         on_error=cfg.reward.on_error, error_score=cfg.reward.error_score, base_dir=os.getcwd())


def _latest_run(output_dir: Path, name: str) -> Path | None:
    runs = sorted(p for p in output_dir.glob(f"{name}-*") if p.is_dir()) if output_dir.exists() else []
    return runs[-1] if runs else None


def _nanmean(values) -> float:
    vals = [v for v in values if v == v]
    return sum(vals) / len(vals) if vals else float("nan")

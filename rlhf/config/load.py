"""Load a recipe: schema defaults <- recipe YAML <- dotted command-line overrides.

    cfg = load_config("recipes/ppo_tiny.yaml", ["actor.lr=1e-5", "run.total_steps=3"])
    cfg = load_config("recipes/sft_tiny.yaml", [], schema=SFTConfig)

Without `schema`, a recipe's top-level `stage:` key picks it (`sft`, `rm`; none: PPO).

Every mistake a user can make in a recipe surfaces here, before any worker starts,
as a ConfigError that names the key.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlhf.config.checks import ConfigError, check_fields
from rlhf.config.schema import RunConfig
from rlhf.config.stages import STAGE_SCHEMAS, DPOConfig, RMConfig, SFTConfig


def load_config(recipe: str | Path | None = None, overrides: Sequence[str] = (), schema: type | None = None):
    """The typed config of `recipe` + `overrides`: a RunConfig (PPO), SFTConfig, RMConfig or DPOConfig."""
    layers = []
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        layers.append(_read_yaml(path))
    layers.append(_parse_overrides(overrides))
    stage = next((layer["stage"] for layer in reversed(layers) if "stage" in layer), None)
    if schema is None:
        if stage is not None and stage not in STAGE_SCHEMAS:
            raise ConfigError(f"config key 'stage' is {stage!r}; expected one of {sorted(STAGE_SCHEMAS)} "
                              f"(or no stage key for a PPO recipe)")
        schema = STAGE_SCHEMAS.get(stage, RunConfig)
    expected = getattr(schema, "stage", None)
    if stage is not None and stage != expected:
        raise ConfigError(f"config key 'stage' is {stage!r}; this command runs {expected or 'PPO'!r} recipes")
    for layer in layers:
        _check_sections(schema, layer)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), *layers)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err)) from None
    _VALIDATORS[schema](cfg)
    return cfg


def _read_yaml(path: Path):
    try:
        layer = OmegaConf.load(path)
    except Exception as err:  # yaml errors carry line/column
        raise ConfigError(f"cannot parse recipe {path}: {' '.join(str(err).split())}") from None
    if not isinstance(layer, DictConfig):
        raise ConfigError(f"recipe {path}: the top level must be a mapping of sections (run:, model:, ...), "
                          f"not a {type(layer).__name__.removesuffix('Config').lower()}")
    if not layer:
        raise ConfigError(f"recipe {path} is empty; start from one in recipes/")
    return layer


def _check_sections(schema: type, layer, prefix: str = "") -> None:
    """A section given as a scalar or list (`run: 5`) names its key (OmegaConf's merge error does not)."""
    hints = typing.get_type_hints(schema)
    sections = {f.name: hints[f.name] for f in dataclasses.fields(schema) if dataclasses.is_dataclass(hints[f.name])}
    for name, section in sections.items():
        value = layer.get(name) if isinstance(layer, DictConfig) else None
        if value is None:
            continue
        if not isinstance(value, DictConfig):
            raise ConfigError(f"config key '{prefix}{name}' must be a mapping of keys (got {value!r})")
        _check_sections(section, value, f"{prefix}{name}.")


def _parse_overrides(overrides: Sequence[str]):
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err)) from None


def _explain(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    first_line = str(err).splitlines()[0]
    if "Key" in first_line and "not in" in first_line:
        return f"unknown config key '{key}' ({first_line})"
    return f"bad value for config key '{key}': {first_line}" if key else first_line


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# ---------------------------------------------------------------- validation
def validate(cfg: RunConfig) -> None:
    """Ranges and choices declared on the fields, then what they cannot express."""
    check_fields(cfg)
    _check_registries(cfg)
    _check_estimator_needs(cfg)
    _check_batch_arithmetic(cfg)
    _check_ranges(cfg)
    _check_rewards(cfg)
    _check_agent(cfg)
    _check_overlap(cfg)
    _check_gpus(cfg)
    _check_lora(cfg)
    check_role_resources(cfg.cluster.role_resources, PPO_ROLES)


def _check_registries(cfg: RunConfig) -> None:
    from rlhf.algorithms import ADV_ESTIMATORS, KL_ESTIMATORS, POLICY_LOSSES

    algo = cfg.algorithm
    for key, value, registry in (
        ("algorithm.adv_estimator", algo.adv_estimator, ADV_ESTIMATORS),
        ("algorithm.policy_loss", algo.policy_loss, POLICY_LOSSES),
        ("algorithm.kl.estimator", algo.kl.estimator, KL_ESTIMATORS),
        ("algorithm.kl.loss_estimator", algo.kl.loss_estimator, KL_ESTIMATORS),
    ):
        if value not in registry:
            raise ConfigError(f"config key '{key}' is {value!r}; registered: {sorted(registry.names())}")
    from rlhf.metrics import TRACKERS

    for name in cfg.run.trackers:
        if name not in TRACKERS:
            raise ConfigError(f"config key 'run.trackers': unknown tracker {name!r}; choose from {sorted(TRACKERS)}")


def _check_estimator_needs(cfg: RunConfig) -> None:
    """The config against what the advantage estimator declared (rlhf.algorithms.EstimatorNeeds)."""
    algo, needs = cfg.algorithm, cfg.algorithm.needs
    name = algo.adv_estimator
    if algo.kl.in_reward and not needs.token_rewards:
        raise ConfigError(f"config key 'algorithm.kl.in_reward' is true, but algorithm.adv_estimator={name!r} reads "
                          f"only the sequence scores, so a KL penalty in the reward would do nothing; leave it unset "
                          f"(or false) and put the KL in the loss with algorithm.kl.loss_coef > 0")
    if needs.groups and cfg.rollout.n < 2:
        raise ConfigError(f"config key 'rollout.n' must be >= 2 for algorithm.adv_estimator={name!r} (group baseline)")
    if cfg.train.critic_warmup_steps < 0:
        raise ConfigError(f"config key 'train.critic_warmup_steps' must be >= 0 (got {cfg.train.critic_warmup_steps})")
    if cfg.train.critic_warmup_steps and not needs.critic:
        raise ConfigError(f"config key 'train.critic_warmup_steps' is {cfg.train.critic_warmup_steps}, but "
                          f"algorithm.adv_estimator={name!r} has no critic to warm up")
    if algo.kl.loss_coef > 0 and algo.kl.loss_estimator == "k1":
        # d/dtheta of E_pi[log pi - log ref] estimated by the sampled k1 is grad log pi, whose
        # expectation under pi is 0: the term adds noise and no pull towards the reference.
        raise ConfigError("config key 'algorithm.kl.loss_estimator' is 'k1': as a loss its gradient is zero in "
                          "expectation (no pull towards the reference); use k3 (or k2) for the KL loss")


def _check_batch_arithmetic(cfg: RunConfig) -> None:
    t, batch = cfg.train, cfg.rollout_batch_size
    if batch % t.mini_batch_size:
        raise ConfigError(
            f"config key 'train.mini_batch_size' ({t.mini_batch_size}) must divide the rollout batch "
            f"train.prompts_per_step x rollout.n = {t.prompts_per_step} x {cfg.rollout.n} = {batch}")
    roles = [("actor", cfg.actor)] + ([("critic", cfg.critic)] if cfg.algorithm.uses_critic else [])
    for role, section in roles:
        per_step = section.num_workers * t.micro_batch_size
        if t.mini_batch_size % per_step:
            raise ConfigError(
                f"config key 'train.mini_batch_size' ({t.mini_batch_size}) must be a multiple of "
                f"{role}.num_workers x train.micro_batch_size = {section.num_workers} x {t.micro_batch_size}")
    if batch % cfg.rollout.num_workers:
        raise ConfigError(f"config key 'rollout.num_workers' ({cfg.rollout.num_workers}) must divide the rollout batch ({batch})")


def _check_ranges(cfg: RunConfig) -> None:
    """Ranges that depend on another key."""
    algo = cfg.algorithm
    if algo.policy_loss.startswith("gspo") and algo.dual_clip is not None:
        raise ConfigError(f"config key 'algorithm.dual_clip' must be unset with algorithm.policy_loss="
                          f"{algo.policy_loss!r} (GSPO clips whole sequences with clip_low / clip_high)")
    if algo.filter_groups and not algo.needs.groups:
        raise ConfigError(f"config key 'algorithm.filter_groups' needs a group-based algorithm.adv_estimator "
                          f"(grpo, rloo, reinforce++-baseline), not {algo.adv_estimator!r}")
    if cfg.algorithm.overlong_buffer > cfg.response_budget:
        budget_key = "rollout.agent.max_total_tokens" if cfg.rollout.agent.enabled else "rollout.max_new_tokens"
        raise ConfigError(f"config key 'algorithm.overlong_buffer' ({cfg.algorithm.overlong_buffer}) must be <= "
                          f"{budget_key} ({cfg.response_budget})")


def _check_agent(cfg: RunConfig) -> None:
    """The environment and tools load (a bad spec fails here, before anything starts); their
    files become absolute paths, so every rollout worker loads the same ones whatever its cwd."""
    agent = cfg.rollout.agent
    if not agent.enabled:
        return
    if agent.environment and agent.tools:
        raise ConfigError("config keys 'rollout.agent.environment' and 'rollout.agent.tools' are exclusive: "
                          "tools are an environment (give tools, or an environment with a `tools` attribute)")
    if cfg.rollout.max_new_tokens > agent.max_total_tokens:
        raise ConfigError(f"config key 'rollout.max_new_tokens' ({cfg.rollout.max_new_tokens}, per turn) must be <= "
                          f"rollout.agent.max_total_tokens ({agent.max_total_tokens})")
    from rlhf.agent.env import EnvError, load_environment

    if agent.environment:
        try:
            load_environment(agent.environment)
        except EnvError as err:
            raise ConfigError(f"config key 'rollout.agent.environment': {err}") from None
    for i, spec in enumerate(agent.tools):
        from rlhf.agent.tools import load_tool

        try:
            load_tool(spec)
        except Exception as err:  # noqa: BLE001 - a bad tool spec or file, named by its key
            raise ConfigError(f"config key 'rollout.agent.tools[{i}]': {err}") from None
    from rlhf.agent.env import resolve_agent_specs

    cfg.rollout.agent = resolve_agent_specs(agent, os.getcwd())


def _check_overlap(cfg: RunConfig) -> None:
    """rollout.mode one_step / async train on samples of older weight versions (rlhf/overlap.py)."""
    r = cfg.rollout
    _check_partial(cfg)
    if r.mode == "sync" or (r.mode == "async" and r.max_staleness == 0):  # async at staleness 0 is sync
        return
    if r.max_staleness < 1:
        raise ConfigError("config key 'rollout.max_staleness' must be >= 1 with rollout.mode=one_step (its samples "
                          "are one weight version old); rollout.mode=sync is staleness 0")
    if cfg.algorithm.tis_cap is None:
        raise ConfigError(f"config key 'algorithm.tis_cap' must be set with rollout.mode={r.mode} (e.g. 2.0): the "
                          f"truncated importance weights correct for samples drawn by older policies")
    if cfg.algorithm.filter_groups:
        raise ConfigError(f"config key 'algorithm.filter_groups' is not supported with rollout.mode={r.mode} "
                          f"(extra generation rounds would wait on the batches in flight)")
    if r.sleep_between_steps:
        raise ConfigError(f"config key 'rollout.sleep_between_steps' must be off with rollout.mode={r.mode}: the "
                          f"engines generate the next batches while the trainer runs")


def _check_partial(cfg: RunConfig) -> None:
    """rollout.partial resume pauses the requests in flight at a weight sync (workers/partial.py)."""
    r = cfg.rollout
    if r.partial != "resume":
        return
    if r.mode != "async" or r.max_staleness < 1:
        raise ConfigError("config key 'rollout.partial' is 'resume', which needs rollout.mode=async with "
                          "rollout.max_staleness >= 1 (only then are requests in flight at a weight sync)")
    if cfg.actor.lora.enabled and not cfg.sync.lora_merge:
        raise ConfigError("config key 'rollout.partial' is 'resume', not supported with an adapter-only sync "
                          "(actor.lora without sync.lora_merge); use 'finish'")
    if r.num_gpus > 0:
        raise ConfigError("config key 'rollout.partial' is 'resume', not supported on GPU engines (their sync "
                          "runs through vLLM's weight transfer); use 'finish'")


def _check_rewards(cfg: RunConfig) -> None:
    functions = cfg.reward.functions
    if not functions and not cfg.rollout.agent.environment:
        raise ConfigError("config key 'reward.functions' is empty; give at least one, e.g. "
                          "[{name: task, fn: tiny_arithmetic}] (only an agent environment may score alone)")
    names = [f.name for f in functions]
    for i, f in enumerate(functions):
        if not f.name.strip() or not f.fn.strip():
            raise ConfigError(f"config key 'reward.functions[{i}]': name and fn must be non-empty (got {f.name!r}, {f.fn!r})")
        if f.name in names[:i]:
            raise ConfigError(f"config key 'reward.functions[{i}].name': {f.name!r} is used twice; names must be unique")


def _check_gpus(cfg: RunConfig) -> None:
    """An engine whose GPUs differ from its tensor-parallel ranks (vLLM runs one rank per
    GPU of the engine's worker)."""
    tp, gpus = cfg.rollout.tensor_parallel_size, cfg.rollout.num_gpus
    if (tp > 1 or gpus > 1) and gpus != tp:
        raise ConfigError(f"config key 'rollout.tensor_parallel_size' ({tp}) must equal rollout.num_gpus ({gpus:g}) "
                          f"when either is above 1: each tensor-parallel rank of an engine needs one GPU")
    hybrid = cfg.cluster.placement == "colocated" and 0 < gpus < 1 and 0 < cfg.actor.num_gpus < 1
    if hybrid and cfg.rollout.num_workers > cfg.actor.num_workers:
        raise ConfigError(f"config key 'rollout.num_workers' ({cfg.rollout.num_workers}) must not exceed "
                          f"actor.num_workers ({cfg.actor.num_workers}) in the hybrid engine: each engine shares "
                          f"the GPU of one actor rank and takes its weights from it")
    if 0 < gpus < 1 and cfg.rollout.memory_fraction > gpus + 1e-9:
        raise ConfigError(f"config key 'rollout.memory_fraction' ({cfg.rollout.memory_fraction:g}) must not exceed "
                          f"rollout.num_gpus ({gpus:g}): an engine sharing its GPU may use only its share of the memory")


def _check_lora(cfg: RunConfig) -> None:
    """actor.lora / sync.lora_merge combinations (the model is checked at start: rlhf.lora.check_lora)."""
    lora = cfg.actor.lora
    if not lora.enabled:
        return
    if cfg.model.reference and cfg.model.reference != cfg.model.policy:
        raise ConfigError(f"config key 'model.reference' is {cfg.model.reference!r}, but with actor.lora the "
                          f"reference is the policy's base model (adapters disabled); remove model.reference")
    if not cfg.sync.lora_merge:
        from rlhf.lora import vllm_max_lora_rank

        vllm_max_lora_rank(lora.rank, "actor.lora.rank")
    elif cfg.rollout.num_gpus > 0:
        raise ConfigError("config key 'sync.lora_merge' is true with GPU rollout engines: merged LoRA weights go "
                          "through the CPU transports only; leave it false (the engines serve the adapter)")


# ---------------------------------------------------------------- sft / rm stages
def validate_stage(cfg: SFTConfig | RMConfig | DPOConfig) -> None:
    """Semantic checks of an `rlhf sft` / `rlhf rm` config."""
    check_fields(cfg)
    if cfg.trainer.lora.enabled:
        raise ConfigError(f"config key 'trainer.lora.rank' is {cfg.trainer.lora.rank}: LoRA is for the PPO run's "
                          f"actor (and critic) only; the {cfg.stage} stage trains every weight")
    unit = "pairs" if isinstance(cfg, (RMConfig, DPOConfig)) else "sequences"
    t, ranks = cfg.train, cfg.trainer.num_workers
    if t.mini_batch_size % (ranks * t.micro_batch_size):
        raise ConfigError(f"config key 'train.mini_batch_size' ({t.mini_batch_size} {unit}) must be a multiple of "
                          f"trainer.num_workers x train.micro_batch_size = {ranks} x {t.micro_batch_size}")
    check_role_resources(cfg.cluster.role_resources, (cfg.stage,))  # the stage's worker role is its name


# ---------------------------------------------------------------- cluster.role_resources
PPO_ROLES = ("rollout", "actor", "critic", "reference", "reward_model")
# Ray's built-in resources have their own config keys (<role>.num_cpus / num_gpus).
_BUILTIN_RESOURCES = ("cpu", "gpu", "memory", "object_store_memory")


def check_role_resources(role_resources: dict, roles: tuple[str, ...]) -> None:
    """Role names must exist; resources must be custom ones with quantities Ray accepts."""
    for role, resources in role_resources.items():
        key = f"cluster.role_resources.{role}"
        if role not in roles:
            raise ConfigError(f"config key '{key}': unknown role {role!r}; roles: {list(roles)}")
        for name, amount in resources.items():
            if name.lower() in _BUILTIN_RESOURCES:
                raise ConfigError(f"config key '{key}.{name}': {name!r} is a built-in Ray resource; set it "
                                  f"with the role's num_cpus / num_gpus keys; role_resources is for custom resources")
            # Ray rejects fractional requests above 1 (a rank asks for a share of one unit or whole units).
            if amount <= 0 or (amount > 1 and amount != int(amount)):
                raise ConfigError(f"config key '{key}.{name}' must be in (0, 1] or a whole number (got {amount:g})")


_VALIDATORS = {RunConfig: validate, SFTConfig: validate_stage, RMConfig: validate_stage, DPOConfig: validate_stage}

"""Config schema, recipe loading and validation (no Ray)."""
import dataclasses
import typing
from pathlib import Path

import pytest

from rlhf.config import ConfigError, RMConfig, RunConfig, SFTConfig, load_config
from rlhf.config.checks import Choice, check_fields

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert {"ppo_tiny.yaml", "grpo_tiny.yaml"} <= {p.name for p in RECIPES}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(recipe):
    from rlhf.config import RunConfig

    cfg = load_config(recipe)
    if isinstance(cfg, RunConfig):  # PPO-family recipes; sft/rm have their own schemas
        assert cfg.rollout_batch_size % cfg.train.mini_batch_size == 0
    header = recipe.read_text().splitlines()[:8]
    assert any("Run:" in line for line in header), "recipe header must say how to run it"
    assert any("Time:" in line for line in header), "recipe header must say how long it takes"


def test_overrides_are_typed_and_applied():
    cfg = load_config(RECIPES[0].with_name("ppo_tiny.yaml"), ["actor.lr=3e-5", "run.total_steps=7", "rollout.stop_token_ids=[1,2]"])
    assert cfg.actor.lr == pytest.approx(3e-5) and cfg.run.total_steps == 7
    assert cfg.rollout.stop_token_ids == [1, 2]


@pytest.mark.parametrize("override,needle", [
    (["actor.lrr=1"], "actor.lrr"),
    (["nosuch.key=1"], "nosuch"),
    (["run.total_steps=abc"], "run.total_steps"),
    (["train.mini_batch_size=48"], "train.mini_batch_size"),
    (["train.micro_batch_size=48"], "train.mini_batch_size"),
    (["algorithm.adv_estimator=ppo2"], "algorithm.adv_estimator"),
    (["actor.zero_stage=4"], "actor.zero_stage"),
    (["cluster.placement=everywhere"], "cluster.placement"),
    (["algorithm.dual_clip=0.5"], "algorithm.dual_clip"),
    (["cluster.torch_threads=-1"], "cluster.torch_threads"),
    (["run.call_timeout_s=-5"], "run.call_timeout_s"),
    (["actorlr"], "actorlr"),
])
def test_bad_config_names_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(Path(RECIPES[0]).parent / "ppo_tiny.yaml", override)
    assert needle in str(err.value)


def test_unknown_key_in_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError, match="rollout.temprature"):
        load_config(bad)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_group_estimators_need_groups():
    with pytest.raises(ConfigError, match="rollout.n"):
        load_config(None, ["algorithm.adv_estimator=grpo", "rollout.n=1", "train.mini_batch_size=16",
                           "train.micro_batch_size=16"])


@pytest.mark.parametrize("overrides, fused", [
    ([], False),                                                  # grpo_tiny: 2 mini-batches per step
    (["train.mini_batch_size=128"], True),                        # one mini-batch, one epoch, KL in the loss
    (["train.mini_batch_size=128", "train.ppo_epochs=2"], False),
    (["train.mini_batch_size=128", "algorithm.adv_estimator=reinforce++", "algorithm.kl.in_reward=true"],
     False),                                                      # the reward needs them first
    (["train.mini_batch_size=128", "algorithm.adv_estimator=reinforce++", "algorithm.kl.in_reward=null"],
     False),                                                      # unset: on for reinforce++
    (["train.mini_batch_size=128", "algorithm.adv_estimator=reinforce++", "algorithm.kl.in_reward=false"], True),
    (["train.mini_batch_size=128", "train.old_logprobs_from_update=false"], False),
])
def test_old_logprobs_from_update_only_when_on_policy(overrides, fused):
    cfg = load_config(RECIPES[0].parent / "grpo_tiny.yaml", overrides)
    assert cfg.old_logprobs_from_update is fused


# ---------------------------------------------------------------- ranges and choices on the fields
def _fields(schema, prefix=""):
    """(dotted key, type, field) of every leaf field of `schema`, nested sections walked."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key, kind = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(kind):
            yield from _fields(kind, key + ".")
        else:
            yield key, kind, f


def _types(kind) -> set:
    return set(typing.get_args(kind) or (kind,))  # Optional[int] -> {int, NoneType}


def _out_of_range(check, kind) -> list:
    """Values just outside a check: an open bound itself, one past a closed bound, NaN."""
    if isinstance(check, Choice):
        return [99 if isinstance(check.values[0], int) else "no-such-choice"]
    bad = []
    if check.low is not None:
        bad.append(check.low if check.low_open else check.low - 1)
    if check.high is not None:
        bad.append(check.high if check.high_open else check.high + 1)
    return bad + (["nan"] if float in _types(kind) else [])


SCHEMAS = ((RunConfig, "ppo_tiny.yaml"), (SFTConfig, "sft_tiny.yaml"), (RMConfig, "rm_tiny.yaml"))


def _bad_values():
    for schema, recipe in SCHEMAS:
        for key, kind, f in _fields(schema):
            for value in _out_of_range(f.metadata["check"], kind) if "check" in f.metadata else []:
                value = f"[{value}]" if typing.get_origin(kind) is list else value  # list fields: each item
                yield pytest.param(RECIPES[0].parent / recipe, key, value, id=f"{schema.__name__}:{key}={value}")


@pytest.mark.parametrize("recipe,key,value", list(_bad_values()))
def test_every_declared_range_and_choice_refuses_values_outside(recipe, key, value):
    with pytest.raises(ConfigError) as err:
        load_config(recipe, [f"{key}={value}"])
    message = str(err.value)
    assert f"config key '{key}' must be " in message and "\n" not in message


def test_every_number_of_the_schema_declares_its_range():
    """A new numeric key must say what it accepts (rlhf.config.checks); these take any value."""
    any_value = {"reward.model_weight", "reward.error_score", "rollout.agent.env_reward_weight"}
    for schema, _ in SCHEMAS:
        unchecked = {key for key, kind, f in _fields(schema)
                     if _types(kind) & {int, float} and "check" not in f.metadata}
        assert unchecked <= any_value, (schema.__name__, unchecked - any_value)


def test_range_messages_say_the_range_and_the_value():
    recipe = RECIPES[0].parent / "ppo_tiny.yaml"
    cases = {"rollout.top_p=1.5": "config key 'rollout.top_p' must be in (0, 1] (got 1.5)",
             "actor.lr=0": "config key 'actor.lr' must be > 0 (got 0.0)",
             "run.max_restarts=-1": "config key 'run.max_restarts' must be >= 0 (got -1)",
             "critic.lr=inf": "config key 'critic.lr' must be a finite number > 0 (got inf)",
             "sync.transport=nccl": "config key 'sync.transport' must be one of ['auto', 'shm', 'process_group']"}
    for override, expected in cases.items():
        with pytest.raises(ConfigError) as err:
            load_config(recipe, [override])
        assert expected in str(err.value)


def test_defaults_and_shipped_recipes_pass_their_checks():
    for schema, recipe in SCHEMAS:
        check_fields(schema())
        check_fields(load_config(RECIPES[0].parent / recipe))


@pytest.mark.parametrize("text,needle", [
    ("", "is empty"),
    ("# nothing but a comment\n", "is empty"),
    ("- run\n- model\n", "must be a mapping of sections"),
    ("run: 5\n", "config key 'run' must be a mapping"),
    ("algorithm:\n  kl: [1]\n", "config key 'algorithm.kl' must be a mapping"),
    ("run: {total_steps: 3\n", "cannot parse recipe"),
])
def test_recipe_that_is_empty_or_not_a_mapping_is_refused(tmp_path, text, needle):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(recipe)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override,needle", [
    ("reward.functions=[]", "config key 'reward.functions' is empty"),
    ("reward.functions=[{name: a, fn: exact_match}, {name: a, fn: gsm8k}]", "reward.functions[1].name"),
    ("reward.functions=[{name: '', fn: exact_match}]", "reward.functions[0]"),
    ("run.trackers=[tensorbored]", "run.trackers"),
    ("algorithm.overlong_buffer=9", "algorithm.overlong_buffer"),  # over rollout.max_new_tokens=8
])
def test_cross_field_checks_name_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(RECIPES[0].parent / "ppo_tiny.yaml", [override])
    assert needle in str(err.value)


@pytest.mark.parametrize("overrides,needle", [
    (["actor.lora.rank=1024"], "config key 'actor.lora.rank' is 1024; vLLM serves adapters of rank <= 512"),
    (["actor.lora.rank=8", "model.reference=tiny:policy_init"], "config key 'model.reference'"),
    (["actor.lora.rank=8", "sync.lora_merge=true", "rollout.num_gpus=1"], "config key 'sync.lora_merge'"),
])
def test_lora_cross_field_checks_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(RECIPES[0].parent / "grpo_tiny.yaml", overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_lora_rank_zero_or_null_is_off_and_merged_rank_is_unbounded():
    for rank in ("0", "null"):
        assert not load_config(RECIPES[0].parent / "grpo_tiny.yaml", [f"actor.lora.rank={rank}"]).actor.lora.enabled
    cfg = load_config(RECIPES[0].parent / "grpo_tiny.yaml", ["actor.lora.rank=1024", "sync.lora_merge=true"])
    assert cfg.actor.lora.enabled and cfg.actor.lora.target_modules == ["all-linear"]


def test_lora_in_an_offline_stage_is_refused():
    with pytest.raises(ConfigError, match="config key 'trainer.lora.rank' is 4"):
        load_config(RECIPES[0].parent / "sft_tiny.yaml", ["trainer.lora.rank=4"])


@pytest.mark.parametrize("estimator, critic, kl_in_reward", [
    ("gae", True, True), ("grpo", False, False), ("rloo", False, False),
    ("reinforce++", False, True), ("reinforce++-baseline", False, True)])
def test_estimator_declarations_drive_critic_and_kl_default(estimator, critic, kl_in_reward):
    cfg = load_config(None, [f"algorithm.adv_estimator={estimator}"])
    assert cfg.algorithm.uses_critic is critic and cfg.algorithm.kl_in_reward is kl_in_reward


def test_grpo_alone_has_no_kl_in_reward_and_takes_the_shortcut():
    cfg = load_config(None, ["algorithm.adv_estimator=grpo", "train.mini_batch_size=64"])
    assert cfg.algorithm.kl.in_reward is None and not cfg.algorithm.kl_in_reward
    assert cfg.old_logprobs_from_update


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_kl_in_reward_refused_where_the_estimator_ignores_token_rewards(estimator):
    with pytest.raises(ConfigError, match=r"'algorithm.kl.in_reward'.*reads only the sequence scores"):
        load_config(None, [f"algorithm.adv_estimator={estimator}", "algorithm.kl.in_reward=true"])


def test_new_estimator_is_validated_by_its_declaration():
    from rlhf.algorithms import ADV_ESTIMATORS, EstimatorNeeds, estimator_needs

    @ADV_ESTIMATORS.register("test-critic-free-grouped", EstimatorNeeds(groups=True))
    def _est(inputs):
        raise AssertionError("not called by validation")

    try:
        assert estimator_needs("test-critic-free-grouped") == EstimatorNeeds(groups=True)
        with pytest.raises(ConfigError, match="rollout.n"):
            load_config(None, ["algorithm.adv_estimator=test-critic-free-grouped", "rollout.n=1",
                               "train.mini_batch_size=16", "train.micro_batch_size=16"])
        cfg = load_config(None, ["algorithm.adv_estimator=test-critic-free-grouped"])
        assert not cfg.algorithm.uses_critic and not cfg.algorithm.kl_in_reward
    finally:
        ADV_ESTIMATORS._entries.pop("test-critic-free-grouped")
        ADV_ESTIMATORS._traits.pop("test-critic-free-grouped")


def test_k1_kl_loss_is_refused():
    with pytest.raises(ConfigError, match="'algorithm.kl.loss_estimator' is 'k1'"):
        load_config(None, ["algorithm.kl.loss_coef=0.01", "algorithm.kl.loss_estimator=k1"])
    load_config(None, ["algorithm.kl.estimator=k1"])  # k1 in the reward is fine (unbiased value)


@pytest.mark.parametrize("overrides, needle", [
    (["train.critic_warmup_steps=-1"], "train.critic_warmup_steps"),
    (["train.critic_warmup_steps=2", "algorithm.adv_estimator=grpo"], "no critic to warm up"),
])
def test_critic_warmup_validation(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, overrides)


@pytest.mark.parametrize("overrides,needle", [
    (["rollout.mode=async", "rollout.max_staleness=2"], "config key 'algorithm.tis_cap' must be set with rollout.mode=async"),
    (["rollout.mode=one_step", "rollout.max_staleness=0", "algorithm.tis_cap=2"], "config key 'rollout.max_staleness'"),
    (["rollout.mode=async", "rollout.max_staleness=-1", "algorithm.tis_cap=2"], "config key 'rollout.max_staleness' must be"),
    (["rollout.mode=async", "algorithm.tis_cap=2", "algorithm.filter_groups=true"], "config key 'algorithm.filter_groups'"),
    (["rollout.mode=async", "algorithm.tis_cap=2", "rollout.sleep_between_steps=true"],
     "config key 'rollout.sleep_between_steps'"),
    (["rollout.mode=eventually"], "config key 'rollout.mode'"),
    (["rollout.partial=resume"], "config key 'rollout.partial' is 'resume', which needs rollout.mode=async"),
    (["rollout.mode=async", "rollout.max_staleness=0", "rollout.partial=resume"], "config key 'rollout.partial'"),
    (["rollout.mode=async", "algorithm.tis_cap=2", "rollout.partial=resume", "actor.lora.rank=8"],
     "config key 'rollout.partial' is 'resume', not supported with an adapter-only sync"),
    (["rollout.partial=later"], "config key 'rollout.partial'"),
])
def test_overlap_modes_refuse_bad_combinations_naming_the_key(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(RECIPES[0].parent / "grpo_tiny.yaml", overrides)
    assert needle in str(err.value)


def test_async_at_staleness_zero_is_sync_and_needs_no_correction():
    cfg = load_config(RECIPES[0].parent / "grpo_tiny.yaml", ["rollout.mode=async", "rollout.max_staleness=0"])
    assert cfg.rollout.mode == "async" and cfg.algorithm.tis_cap is None

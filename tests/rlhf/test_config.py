"""Config schema, recipe loading and validation (no Ray)."""
from pathlib import Path

import pytest

from rlhf.config import ConfigError, load_config

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
    cfg = load_config(RECIPES[0], ["actor.lr=3e-5", "run.total_steps=7", "rollout.stop_token_ids=[1,2]"])
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

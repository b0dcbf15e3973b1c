"""Bad input through the real command line (`rlhf.cli.main`): each misconfiguration
exits 2 with ONE line naming the key, file or row, no traceback, before any role
starts and without leaving a run directory (`refused`).

Exit codes: 2 for configuration and input errors, 1 for a run that cannot go on.
Reward functions that raise, hang or return the wrong type are covered where they
run, with real worker processes: tests/rewards/test_reward_manager.py
(test_failure_*_policy_*, test_hung_workers_are_replaced_*); here the CLI path of a
failing reward is exercised with an unreachable reward server.
"""
from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "recipes" / "grpo_tiny.yaml")

pytestmark = pytest.mark.integration


def cli(tmp_path: Path, *overrides: str) -> int:
    from rlhf.cli import main

    return main(["train", RECIPE, f"run.output_dir={tmp_path}", "run.plots=false", "run.export_hf=false",
                 "data.eval_path=null", *overrides])


RAY_FORWARDED = re.compile(r"^(\x1b\[[0-9;]*m)?\(\w+ pid=\d+")


def refused(code: int, capsys, needle: str, runs: Path) -> str:
    """Exit 2, one stderr line `rlhf: ...` containing `needle`, no traceback, no run directory."""
    err = capsys.readouterr().err
    # lines Ray forwards late from an earlier test's worker processes ("(RolloutWorker pid=..) ...")
    lines = [line for line in err.strip().split("\n") if not RAY_FORWARDED.match(line)]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("rlhf: ") and needle in lines[0], err
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())
    return lines[0]


def jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("override,needle", [
    ("run.totl_steps=3", "run.totl_steps"),                      # unknown key
    ("run.total_steps=three", "run.total_steps"),                # mistyped value
    ("algorithm.adv_estimator=ppo2", "algorithm.adv_estimator"), # unknown choice
])
def test_config_errors_name_the_key_before_anything_starts(tmp_path, capsys, override, needle):
    refused(cli(tmp_path, override), capsys, needle, tmp_path)


@pytest.mark.parametrize("overrides,needle", [
    (("algorithm.policy_loss=gspo", "algorithm.dual_clip=3"),
     "config key 'algorithm.dual_clip' must be unset with algorithm.policy_loss='gspo'"),
    (("algorithm.adv_estimator=reinforce++", "algorithm.filter_groups=true"),
     "config key 'algorithm.filter_groups' needs a group-based algorithm.adv_estimator"),
])
def test_algorithm_combinations_are_refused(tmp_path, capsys, overrides, needle):
    refused(cli(tmp_path, *overrides), capsys, needle, tmp_path)


# Negative or zero sizes, rates and counts; values outside their range (rlhf.config.checks).
@pytest.mark.parametrize("override", [
    "rollout.temperature=0", "rollout.temperature=-1", "rollout.top_p=0", "rollout.top_p=1.5",
    "rollout.top_k=-2", "algorithm.clip_low=0", "algorithm.clip_low=1.2", "algorithm.clip_high=-0.1",
    "algorithm.dual_clip=1", "algorithm.gamma=0", "algorithm.lam=1.5", "algorithm.value_clip=0",
    "algorithm.tis_cap=0", "actor.lr=0", "critic.lr=-1e-5", "actor.lr=nan", "actor.weight_decay=-0.1",
    "train.micro_batch_size=0", "train.mini_batch_size=-64", "train.prompts_per_step=0",
    "train.ppo_epochs=0", "rollout.n=0", "rollout.max_new_tokens=0", "rollout.kv_cache_gib=0",
    "rollout.memory_fraction=1.5", "rollout.num_cpus=0", "actor.num_cpus=-1", "reference.num_cpus=0",
    "reward.num_cpus=0", "rollout.num_gpus=-1", "cluster.num_cpus=0", "run.max_restarts=-1",
    "run.max_bad_steps=-1", "run.call_timeout_s=-5", "reward.timeout_s=0", "reward.num_workers=0",
    "run.total_steps=0", "run.keep_checkpoints=0", "data.max_prompt_tokens=0", "data.eval_size=0",
    "algorithm.kl.coef=-0.1", "algorithm.kl.loss_coef=-1", "algorithm.kl.horizon=0",
    "sync.bucket_mb=0", "actor.zero_stage=5", "sync.transport=nccl", "data.template=jinja",
    "algorithm.max_gen_batches=0",
])
def test_out_of_range_values_are_refused_naming_the_key(tmp_path, capsys, override):
    key = override.split("=")[0]
    line = refused(cli(tmp_path, override), capsys, f"config key '{key}' must be", tmp_path)
    assert "(got " in line


@pytest.mark.parametrize("override,needle", [
    ("reward.functions=[]", "config key 'reward.functions' is empty"),
    ("reward.functions=[{name: a, fn: exact_match}, {name: a, fn: gsm8k}]", "'reward.functions[1].name'"),
    ("run.trackers=[tensorbored]", "unknown tracker 'tensorbored'"),
    ("algorithm.overlong_buffer=6", "algorithm.overlong_buffer"),  # over rollout.max_new_tokens=5
])
def test_empty_or_inconsistent_reward_and_tracker_lists_are_refused(tmp_path, capsys, override, needle):
    refused(cli(tmp_path, override), capsys, needle, tmp_path)


@pytest.mark.parametrize("command", ["train", "sft", "rm", "dpo"])
@pytest.mark.parametrize("text,needle", [
    ("", "is empty"),
    ("# a comment, no keys\n", "is empty"),
    ("- run\n- model\n", "must be a mapping of sections"),
    ("plain text\n", "plain text"),
    ("run: 5\n", "config key 'run' must be a mapping"),
    ("run: {total_steps: 3\n", "cannot parse recipe"),
])
def test_empty_or_non_mapping_recipe_is_refused(tmp_path, capsys, command, text, needle):
    from rlhf.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    refused(main([command, str(recipe), f"run.output_dir={tmp_path / 'runs'}"]), capsys, needle, tmp_path / "runs")


@pytest.mark.parametrize("command,recipe,override", [
    ("sft", "sft_tiny.yaml", "trainer.lr=0"), ("sft", "sft_tiny.yaml", "train.micro_batch_size=0"),
    ("sft", "sft_tiny.yaml", "data.max_tokens=0"), ("sft", "sft_tiny.yaml", "model.dtype=fp16"),
    ("sft", "sft_tiny.yaml", "trainer.num_cpus=0"), ("rm", "rm_tiny.yaml", "train.margin=-1"),
    ("rm", "rm_tiny.yaml", "data.max_prompt_tokens=0"), ("rm", "rm_tiny.yaml", "data.eval_size=-1"),
    ("rm", "rm_tiny.yaml", "data.format=csv"), ("rm", "rm_tiny.yaml", "trainer.warmup_steps=-1"),
    ("dpo", "dpo_tiny.yaml", "train.beta=0"), ("dpo", "dpo_tiny.yaml", "train.beta=-0.1"),
    ("dpo", "dpo_tiny.yaml", "train.label_smoothing=0.5"), ("dpo", "dpo_tiny.yaml", "train.label_smoothing=-0.1"),
    ("dpo", "dpo_tiny.yaml", "train.loss=kto"), ("dpo", "dpo_tiny.yaml", "train.micro_batch_size=0"),
    ("dpo", "dpo_tiny.yaml", "data.format=csv"),
])
def test_stage_config_ranges_are_refused(tmp_path, capsys, command, recipe, override):
    from rlhf.cli import main

    code = main([command, str(ROOT / "recipes" / recipe), f"run.output_dir={tmp_path}", override])
    refused(code, capsys, f"config key '{override.split('=')[0]}' must be", tmp_path)


def test_missing_model_path_names_the_key(ray_session, tmp_path, capsys):
    line = refused(cli(tmp_path, "model.policy=/nonexistent/model"), capsys, "model.policy", tmp_path)
    assert "/nonexistent/model" in line


def _break_model(folder: Path, how: str) -> None:
    if how == "no weights":
        for weights in folder.glob("*.safetensors"):
            weights.unlink()
    elif how == "broken config.json":
        text = (folder / "config.json").read_text()
        (folder / "config.json").write_text(text[: len(text) // 2])
    elif how == "unknown model_type":
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "no_such_arch"}))
    elif how == "no config.json":
        (folder / "config.json").unlink()
    elif how == "truncated weights":
        (weights,) = folder.glob("*.safetensors")
        weights.write_bytes(weights.read_bytes()[:4])


@pytest.mark.parametrize("how,needle", [
    ("no weights", "has no weights"), ("broken config.json", "is not valid JSON"),
    ("unknown model_type", "transformers cannot read"), ("no config.json", "has no config.json"),
    ("truncated weights", "is not a readable safetensors file"),
])
@pytest.mark.parametrize("key,source", [("model.policy", "policy"), ("model.reward_model", "scorer")])
def test_broken_model_folder_names_the_key_and_file(ray_session, tiny, tmp_path, capsys, how, needle, key, source):
    folder = tmp_path / "model"
    shutil.copytree(tiny[source], folder)
    _break_model(folder, how)
    line = refused(cli(tmp_path / "runs", f"{key}={folder}"), capsys, needle, tmp_path / "runs")
    assert f"config key '{key}'" in line and str(folder) in line


def test_unknown_tiny_model_names_the_key(ray_session, tmp_path, capsys):
    refused(cli(tmp_path, "model.policy=tiny:nope"), capsys, "config key 'model.policy'", tmp_path)


@pytest.mark.parametrize("command,source", [("rm", "scorer"), ("dpo", "policy_init")])
@pytest.mark.parametrize("how", ["no weights", "broken config.json"])
def test_stage_model_folder_is_checked(ray_session, tiny, tmp_path, capsys, how, command, source):
    from rlhf.cli import main

    folder = tmp_path / "model"
    shutil.copytree(tiny[source], folder)
    _break_model(folder, how)
    code = main([command, str(ROOT / "recipes" / f"{command}_tiny.yaml"), f"run.output_dir={tmp_path / 'runs'}",
                 f"model.path={folder}"])
    refused(code, capsys, "config key 'model.path'", tmp_path / "runs")


@pytest.mark.parametrize("rows,needle", [
    (None, "not found"),                                               # missing file
    ([], "is empty"),                                                  # empty file
    (["\n", "  \n"], "is empty"),                                      # blank lines only
    (['{"prompt": "1+1=", "label": "2"}\n', "{not json\n"], "data.jsonl"),  # malformed line
    ([{"question": "1+1=", "label": "2"}], "row 0: no prompt key 'prompt'"),
    ([{"prompt": "1+1=", "label": "2"}, {"prompt": " ", "label": "0"}], "row 1: empty"),
    ([{"prompt": "1234567890+1234567890=", "label": "0"}], "exceed data.max_prompt_tokens=8"),
    ([{"prompt": "1+1=", "answer": "2"}], "no label column 'label'"),
    ([{"prompt": "1+1=", "label": "2"}, {"prompt": "2+2="}], "row 1: no label in column 'label'"),
])
def test_bad_dataset_names_the_file_and_row(ray_session, tiny, tmp_path, capsys, rows, needle):
    path = tmp_path / "data.jsonl"
    if rows is not None:
        jsonl(path, rows)
    line = refused(cli(tmp_path / "out", f"data.train_path={path}"), capsys, needle, tmp_path / "out")
    assert "data.jsonl" in line


def test_dataset_without_rows_is_refused(ray_session, tiny, tmp_path, capsys):
    path = tmp_path / "data.json"
    path.write_text("[]")
    refused(cli(tmp_path / "out", f"data.eval_path={path}"), capsys, f"dataset {path} has no rows", tmp_path / "out")


@pytest.mark.parametrize("command,content,needle", [
    ("sft", b"", "has no rows"),
    ("sft", b'{"prompt": "1+1="}\n', "row 0: missing, empty or non-text 'response'"),
    ("rm", b"", "has no rows"),
    ("rm", b"not gzip at all", "cannot read dataset"),
    ("rm", gzip.compress(b'{"chosen": "x"}\n'), "row 0: missing, empty or non-text 'rejected'"),
    ("dpo", b"", "has no rows"),
    ("dpo", b"not gzip at all", "cannot read dataset"),
    ("dpo", gzip.compress(b'{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: yo"}\n'),
     "row 0: missing, empty or non-text 'rejected'"),
])
def test_stage_datasets_name_the_file_and_row(ray_session, tiny, tmp_path, capsys, command, content, needle):
    from rlhf.cli import main

    path = tmp_path / "pairs.jsonl.gz" if command in ("rm", "dpo") else tmp_path / "rows.jsonl"
    path.write_bytes(content)
    code = main([command, str(ROOT / "recipes" / f"{command}_tiny.yaml"), f"run.output_dir={tmp_path / 'runs'}",
                 f"data.train_path={path}"])
    line = refused(code, capsys, needle, tmp_path / "runs")
    assert path.name in line


def test_long_prompts_are_dropped_and_counted_then_missing_resources_fail_fast(ray_session, tiny, tmp_path,
                                                                               capsys):
    """Prompts over the budget are a logged skip (documented policy), not an error; a
    cluster without the requested CPUs fails before any placement wait."""
    rows = [{"prompt": f"{i}+{i}=", "label": str(2 * i)} for i in range(16)]
    rows.append({"prompt": "1234567890+1234567890=", "label": "0"})
    path = jsonl(tmp_path / "data.jsonl", rows)
    assert cli(tmp_path / "out", f"data.train_path={path}", "rollout.num_cpus=512") == 1
    captured = capsys.readouterr()
    assert "16 train (1 dropped over 8 tokens)" in captured.out
    assert "resource 'CPU'" in captured.err and "rollout 1 x 512" in captured.err


def test_unknown_reward_function_names_the_spec(ray_session, tiny, tmp_path, capsys):
    code = cli(tmp_path, "reward.functions=[{name: mine, fn: 'no_such_reward'}]")
    assert code != 0
    assert "no_such_reward" in capsys.readouterr().err


def test_unreachable_reward_server_fails_the_step_with_its_url(ray_session, tiny, tmp_path, capsys):
    """Runs the real roles: the first scoring call fails, the run exits 1 naming the
    reward and the server; the run directory keeps its config."""
    url = "http://127.0.0.1:9"  # discard port: connection refused
    code = cli(tmp_path, "run.total_steps=1", "train.prompts_per_step=8", "train.mini_batch_size=64",
               "train.micro_batch_size=32", "run.name=remote",
               f"reward.functions=[{{name: judge, fn: remote, kwargs: {{url: '{url}', retries: 1, backoff_s: 0.1}}}}]")
    err = capsys.readouterr().err
    assert code == 1
    assert url in err and "unreachable" in err and "judge" in err
    (run_dir,) = list(tmp_path.glob("remote-*"))
    assert (run_dir / "config.yaml").exists()


@pytest.mark.parametrize("command,recipe", [("sft", "sft_tiny.yaml"), ("rm", "rm_tiny.yaml"),
                                            ("dpo", "dpo_tiny.yaml")])
def test_stage_commands_check_their_recipes(command, recipe, tmp_path, capsys):
    from rlhf.cli import main

    code = main([command, str(ROOT / "recipes" / recipe), f"run.output_dir={tmp_path}", "trainer.lr=fast"])
    refused(code, capsys, "trainer.lr", tmp_path)


def test_chat_template_needs_a_tokenizer_that_has_one(ray_session, tiny, tmp_path, capsys):
    """The tiny kit's char-level tokenizer has no chat template."""
    refused(cli(tmp_path, "data.template=chat"), capsys, "config key 'data.template' is 'chat'", tmp_path)


@pytest.mark.parametrize("command,recipe,rows", [("sft", "sft_tiny.yaml", "sequences"),
                                                 ("rm", "rm_tiny.yaml", "preference pairs")])
def test_stage_batch_larger_than_the_data_names_its_key(command, recipe, rows, ray_session, tmp_path, capsys):
    from rlhf.cli import main

    code = main([command, str(ROOT / "recipes" / recipe), f"run.output_dir={tmp_path}",
                 "train.mini_batch_size=1000000", "train.micro_batch_size=1000000"])
    err = capsys.readouterr().err  # data loading may say things first (pairs kept, long rows)
    assert code == 2, err
    assert re.fullmatch(rf"rlhf: error: train.mini_batch_size=1000000 exceeds the \d+ usable {rows}",
                        err.strip().splitlines()[-1]), err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())

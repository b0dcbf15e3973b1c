"""Bad input through the real command line (`rlhf.cli.main`): each case exits non-zero
with a message naming the thing at fault, before any role starts where possible.

Exit codes: 2 for configuration and input errors, 1 for a run that cannot go on.
Reward functions that raise, hang or return the wrong type are covered where they
run, with real worker processes: tests/rewards/test_reward_manager.py
(test_failure_*_policy_*, test_hung_workers_are_replaced_*); here the CLI path of a
failing reward is exercised with an unreachable reward server.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPE = str(ROOT / "recipes" / "grpo_tiny.yaml")

pytestmark = pytest.mark.integration


def cli(tmp_path: Path, *overrides: str) -> int:
    from rlhf.cli import main

    return main(["train", RECIPE, f"run.output_dir={tmp_path}", "run.plots=false", "run.export_hf=false",
                 "data.eval_path=null", *overrides])


def jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("override,needle", [
    ("run.totl_steps=3", "run.totl_steps"),                      # unknown key
    ("run.total_steps=three", "run.total_steps"),                # mistyped value
    ("algorithm.adv_estimator=ppo2", "algorithm.adv_estimator"), # unknown choice
])
def test_config_errors_name_the_key_before_anything_starts(tmp_path, capsys, override, needle):
    assert cli(tmp_path, override) == 2
    assert needle in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no run directory was made


def test_missing_model_path_names_the_key(ray_session, tmp_path, capsys):
    assert cli(tmp_path, "model.policy=/nonexistent/model") == 2
    err = capsys.readouterr().err
    assert "model.policy" in err and "/nonexistent/model" in err


@pytest.mark.parametrize("rows,needle", [
    (None, "not found"),                                               # missing file
    (['{"prompt": "1+1=", "label": "2"}\n', "{not json\n"], "data.jsonl"),  # malformed line
    ([{"question": "1+1=", "label": "2"}], "row 0: no prompt key 'prompt'"),
    ([{"prompt": "1+1=", "label": "2"}, {"prompt": " ", "label": "0"}], "row 1: empty"),
    ([{"prompt": "1234567890+1234567890=", "label": "0"}], "exceed data.max_prompt_tokens=8"),
])
def test_bad_dataset_names_the_file_and_row(ray_session, tiny, tmp_path, capsys, rows, needle):
    path = tmp_path / "data.jsonl"
    if rows is not None:
        jsonl(path, rows)
    assert cli(tmp_path / "out", f"data.train_path={path}") == 2
    err = capsys.readouterr().err
    assert needle in err and "data.jsonl" in err


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


@pytest.mark.parametrize("command,recipe", [("sft", "sft_tiny.yaml"), ("rm", "rm_tiny.yaml")])
def test_stage_commands_check_their_recipes(command, recipe, capsys):
    from rlhf.cli import main

    assert main([command, str(ROOT / "recipes" / recipe), "trainer.lr=fast"]) == 2
    assert "trainer.lr" in capsys.readouterr().err

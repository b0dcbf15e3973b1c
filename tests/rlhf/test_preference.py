"""Bradley-Terry loss, preference/SFT data parsing and batching (no Ray)."""
import gzip
import json
import math

import pytest
import torch

from rlhf.algorithms import bradley_terry_loss
from rlhf.config import ConfigError, RMConfig, SFTConfig, load_config
from rlhf.data import DataError
from rlhf.preference_data import load_preferences, load_sft, pair_batch, split_hh


def test_bradley_terry_matches_hand_computed_values():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    # diffs 1, 0, -2: -log sigmoid(d) = log(1 + e^-d)
    expected = (math.log(1 + math.exp(-1)) + math.log(2) + math.log(1 + math.exp(2))) / 3
    loss, acc = bradley_terry_loss(chosen, rejected)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert acc.item() == pytest.approx(1 / 3)  # a tie is not a correct ranking
    # margin 0.5: diffs shift to 0.5, -0.5, -2.5
    expected_m = sum(math.log(1 + math.exp(-(d - 0.5))) for d in (1, 0, -2)) / 3
    assert bradley_terry_loss(chosen, rejected, margin=0.5)[0].item() == pytest.approx(expected_m, rel=1e-6)
    # a global normaliser: parts of a split batch add up to the whole-batch mean
    parts = [bradley_terry_loss(chosen[s], rejected[s], normalizer=3)[0] for s in (slice(0, 1), slice(1, 3))]
    assert sum(parts).item() == pytest.approx(expected, rel=1e-6)


def test_bradley_terry_gradient_and_stability():
    chosen = torch.tensor([0.0], requires_grad=True)
    loss, _ = bradley_terry_loss(chosen, torch.tensor([0.0]))
    loss.backward()
    assert chosen.grad.item() == pytest.approx(-0.5)  # d/dr_c -log sigmoid(r_c - r_r) = -(1 - sigmoid(0))
    big, _ = bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([200.0]))
    assert math.isfinite(big.item()) and big.item() == pytest.approx(400.0)


def test_hh_row_splits_at_the_last_assistant_turn():
    prefix = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how to pick a lock?\n\nAssistant:"
    prompt, good, bad = split_hh(prefix + " I can't help with that.", prefix + " Sure, take a pin.")
    assert prompt == prefix
    assert (good, bad) == (" I can't help with that.", " Sure, take a pin.")


class _CharTok:
    eos_token_id, pad_token_id = 1, 0

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]


def _write_gz(path, rows):
    with gzip.open(path, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))


def test_hh_jsonl_gz_loading_budget_and_left_truncation(tmp_path):
    p = "\n\nHuman: abcdefgh\n\nAssistant:"
    rows = [{"chosen": p + " no", "rejected": p + " yes"},
            {"chosen": p + " " + "x" * 100, "rejected": p + " ok"},          # over budget: dropped
            {"chosen": p + " a", "rejected": "\n\nHuman: other\n\nAssistant: b"}]  # prompts differ
    _write_gz(tmp_path / "hh.jsonl.gz", rows)
    cfg = load_config(None, ["data.max_tokens=40", "data.max_prompt_tokens=20"], schema=RMConfig).data
    data = load_preferences(str(tmp_path / "hh.jsonl.gz"), cfg, _CharTok())
    assert (len(data), data.dropped_too_long, data.dropped_mismatch) == (1, 1, 1)
    assert data.prompts[0] == [ord(c) for c in p[-20:]]  # the LAST 20 prompt chars kept
    assert data.chosen[0] == [ord(c) for c in " no"] + [1] and data.rejected[0][-1] == 1  # EOS-terminated


@pytest.mark.parametrize("row,needle", [
    ({"chosen": "no assistant turn here", "rejected": "x"}, "Assistant"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: b"}, "'rejected'"),
    ({"chosen": 3, "rejected": "x"}, "'chosen'"),
])
def test_bad_hh_rows_name_file_and_row(tmp_path, row, needle):
    good = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as err:
        load_preferences(str(path), RMConfig().data, _CharTok())
    assert "bad.jsonl row 1" in str(err.value) and needle in str(err.value)


def test_pairs_format_and_pair_batch_layout(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "Q1", "chosen": "good", "rejected": "b"},
        {"prompt": "Question2", "chosen": "g", "rejected": "bad!"}]))
    data = load_preferences(str(path), RMConfig().data, _CharTok())  # "auto" -> pairs (prompt column)
    batch = pair_batch(data, [0, 1], pad_id=0)
    assert batch.size == 4 and batch.group_ids.tolist() == [0, 0, 1, 1]
    assert batch.prompt_len == 9 and batch.response_len == 5  # "bad!" + EOS
    # row 1 = rejected of pair 0: prompt left-padded, "b"+EOS right-padded
    assert batch.attention_mask[1].tolist() == [0] * 7 + [1] * 2 + [1, 1, 0, 0, 0]
    assert batch.response_mask[1].tolist() == [1, 1, 0, 0, 0]
    assert batch.input_ids[1, 9:11].tolist() == [ord("b"), 1]


def test_sft_rows_and_bad_row(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"prompt": "1+1=", "response": "2"}) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(DataError, match="sft.jsonl row 1.*'response'"):
        load_sft(str(path), SFTConfig().data, _CharTok())


def test_stage_configs_pick_their_schema_and_name_bad_keys():
    assert isinstance(load_config(None, ["stage=sft"]), SFTConfig)
    assert load_config(None, ["stage=rm", "train.mini_batch_size=4", "train.micro_batch_size=2"]).batch.mini_batch_size == 8
    with pytest.raises(ConfigError, match="train.mini_batch_size"):
        load_config(None, ["train.mini_batch_size=6", "train.micro_batch_size=4"], schema=RMConfig)
    with pytest.raises(ConfigError, match="data.formt"):
        load_config(None, ["data.formt=hh"], schema=RMConfig)
    with pytest.raises(ConfigError, match="'stage'"):
        load_config(None, ["stage=rm"], schema=SFTConfig)


@pytest.mark.parametrize("name,schema", [("sft_tiny.yaml", SFTConfig), ("rm_tiny.yaml", RMConfig)])
def test_stage_recipes_validate_and_have_headers(name, schema):
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[2] / "recipes" / name
    assert isinstance(load_config(recipe), schema)  # picked by the recipe's `stage:` key
    header = recipe.read_text().splitlines()[:8]
    assert any("Run:" in line for line in header) and any("Time:" in line for line in header)

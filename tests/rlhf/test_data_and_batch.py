"""Prompt loading, the resumable sampler, batch assembly and checkpoints (no Ray)."""
import json

import pytest
import torch

from rlhf import checkpoint as ckpt
from rlhf.config.schema import DataSection
from rlhf.generation import build_batch, reward_columns
from rlhf.data import DataError, PromptSampler, load_prompts


class CharTok:
    """Stand-in tokenizer: one id per character."""
    pad_token_id = 0

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_long_prompts_are_dropped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1=", "label": "2", "src": "a"},
                                               {"prompt": "x" * 50, "label": "?", "src": "b"},
                                               {"prompt": "2+2=", "label": "4", "src": "c"}])
    data = load_prompts(path, DataSection(max_prompt_tokens=10), CharTok())
    assert len(data) == 2 and data.dropped_too_long == 1
    assert data.labels == ["2", "4"] and data.columns["src"] == ["a", "c"]


@pytest.mark.parametrize("rows,needle", [
    ([{"question": "1+1=", "label": "2"}], "row 0: no prompt key 'prompt'"),
    ([{"prompt": "1+1=", "label": "2"}, {"prompt": "  ", "label": "0"}], "row 1: empty"),
    ([{"prompt": "1+1=", "answer": "2"}], "has no label column 'label'"),
    ([{"prompt": "1+1=", "label": "2"}, {"prompt": "2+2="}], "row 1: no label in column 'label'"),
])
def test_bad_rows_name_the_row(tmp_path, rows, needle):
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError, match=needle):
        load_prompts(path, DataSection(), CharTok())


def test_label_key_null_reads_rows_without_labels(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1="}, {"prompt": "2+2="}])
    data = load_prompts(path, DataSection(label_key=None), CharTok())
    assert data.labels == [None, None]


@pytest.mark.parametrize("text,needle", [("", "is empty"), ("\n \n", "is empty"), ("[]", "has no rows")])
def test_empty_files_are_refused(tmp_path, text, needle):
    path = tmp_path / ("p.json" if text == "[]" else "p.jsonl")
    path.write_text(text)
    with pytest.raises(DataError, match=needle):
        load_prompts(str(path), DataSection(), CharTok())


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_prompts(str(tmp_path / "none.jsonl"), DataSection(), CharTok())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1="}\n{not json\n')
    with pytest.raises(DataError, match="bad.jsonl"):
        load_prompts(str(bad), DataSection(), CharTok())


def test_sampler_resumes_exactly():
    a = PromptSampler(10, 3, seed=5)
    seen = [a.next_indices() for _ in range(4)]  # crosses an epoch boundary
    b = PromptSampler(10, 3, seed=5)
    b.next_indices(), b.next_indices()
    c = PromptSampler(10, 3, seed=5)
    c.load_state_dict(b.state_dict())
    assert [c.next_indices(), c.next_indices()] == seen[2:]
    assert sorted(seen[0] + seen[1] + seen[2]) == sorted(set(seen[0] + seen[1] + seen[2]))


@pytest.mark.parametrize("other, needle", [(PromptSampler(11, 3, seed=5), "usable prompts"),
                                           (PromptSampler(10, 3, seed=6), "run.seed = 5, this run has 6")])
def test_sampler_refuses_a_checkpoint_of_another_order(other, needle):
    a = PromptSampler(10, 3, seed=5)
    a.next_indices()
    with pytest.raises(DataError, match=needle):
        other.load_state_dict(a.state_dict())


def test_controller_rng_state_round_trips_through_json(tmp_path):
    import json
    import random

    random.seed(3), torch.manual_seed(3)
    random.random(), torch.rand(2)
    state = json.loads(json.dumps(ckpt.rng_state()))  # as state.json stores it
    expected = (random.random(), random.gauss(0, 1), torch.rand(3))
    random.seed(99), torch.manual_seed(99)
    ckpt.restore_rng(state)
    got = (random.random(), random.gauss(0, 1), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])
    # checkpoints written before this change stored the Python state as its repr
    ckpt.restore_rng({**state, "python_rng": repr(random.getstate())})


def test_build_batch_layout():
    batch = build_batch([[5, 6], [7]], [[1, 2, 9], [3]], [[-.1, -.2, -.3], [-.4]],
                        torch.tensor([0, 1]), torch.tensor([3, 3]), response_len=4, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 1, 2, 9, 0], [0, 7, 3, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]]
    assert batch.response_mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch.position_ids()[1, 1:3].tolist() == [0, 1]
    assert batch.rollout_logprobs[0, :3].tolist() == pytest.approx([-.1, -.2, -.3])
    halves = batch.chunks(2)
    assert halves[1].input_ids.tolist() == [[0, 7, 3, 0, 0, 0]]


def test_checkpoint_commit_is_atomic_and_latest_skips_incomplete(tmp_path):
    first = ckpt.commit(ckpt.staging_dir(tmp_path, 1), {"step": 1}, keep=2)
    crashed = ckpt.staging_dir(tmp_path, 2)  # a write that never finished
    (crashed / "actor").mkdir()
    assert ckpt.latest(tmp_path) == first and ckpt.read_state(first)["step"] == 1
    ckpt.commit(ckpt.staging_dir(tmp_path, 3), {"step": 3}, keep=1)
    assert ckpt.latest(tmp_path).name == "step-000003"
    assert not first.exists()


def test_reward_columns_repeat_per_sample_and_count_response_tokens():
    from rlhf.data import PromptSet

    rows = PromptSet([[5], [6]], ["a", "b"], ["1", "2"], {"source": ["x", "y"]}, 0, "test")
    batch = build_batch([[5], [5], [6], [6]], [[1, 2, 3], [4], [7, 8], []], [[0.0] * 3, [0.0], [0.0] * 2, []],
                        torch.tensor([0, 0, 1, 1]), torch.tensor([0] * 4), response_len=4, pad_id=0)
    assert reward_columns(rows, batch, 2) == {"source": ["x", "x", "y", "y"], "response_length": [3, 1, 2, 0]}

"""The tiny agentic task: products with a calculator, the noisy teacher's transcripts, the
policy-token loss mask, the reward, and the built warm start's promise to RL."""
import json
import random
from pathlib import Path

import pytest

from rewards.builtins import tiny_product
from rlhf.agent.format import ToolCall, format_response, parse_turn
from rlhf.tiny import agent_task, kit
from rlhf.tiny.agent_task import MODES, observe, teacher_transcript

ROW = {"prompt": "123*45=", "label": "5535"}


def test_splits_are_disjoint_and_deterministic():
    train, held_out = agent_task.make_splits(20000, 1024, seed=7)
    assert len(train) == 20000 and len(held_out) == 1024
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    assert (train, held_out) == agent_task.make_splits(20000, 1024, seed=7)
    assert train != agent_task.make_splits(20000, 1024, seed=8)[0]
    assert all(str(int(a) * int(b)) == r["label"] and len(a) == 3 and len(b) == 2
               for r in train[:500] for a, b in [agent_task.operands(r["prompt"])])
    with pytest.raises(ValueError, match="81000 distinct"):
        agent_task.make_splits(80000, 1024, seed=1)


def test_correct_transcript_calls_the_calculator_and_copies_the_result():
    segments = teacher_transcript(ROW, "correct", random.Random(0))
    assert [policy for _, policy in segments] == [True, False, True]
    (call, _), (observation, _), (answer, _) = segments
    assert parse_turn(call).calls == [ToolCall("calculator", {"expression": "123*45"})]
    assert observation == format_response("5535") and answer == "5535"
    assert tiny_product(call + observation + answer, ROW["label"]) == 1.0


# The observation text each malformed call gets: what the agent loop must reply.
EXPECTED_ERRORS = {
    "bad_key": "<tool_response>error: bad arguments: 'expression' is a required property</tool_response>",
    "unquoted": "<tool_response>error: tool call is not valid JSON (Expecting ',' delimiter at char 54)</tool_response>",
    "no_brace": "<tool_response>error: tool call is not valid JSON (Expecting ',' delimiter at char 60)</tool_response>",
}


@pytest.mark.parametrize("mode", sorted(EXPECTED_ERRORS))
def test_malformed_transcripts_get_the_loops_error_then_a_wrong_guess(mode):
    segments = teacher_transcript(ROW, mode, random.Random(0))
    assert [policy for _, policy in segments] == [True, False, True]
    (call, _), (observation, _), (answer, _) = segments
    parsed = parse_turn(call)
    if mode == "bad_key":  # well-formed, but the arguments do not fit the tool
        assert parsed.error is None and parsed.calls == [ToolCall("calculator", {"expr": "123*45"})]
    else:
        assert parsed.calls == [] and parsed.error.startswith("tool call is not valid JSON")
        assert observation == format_response("error: " + parsed.error)
    assert observation == EXPECTED_ERRORS[mode] == observe(call)
    assert answer != "5535" and answer[:2] == "55" and len(answer) == 4
    assert tiny_product(call + observation + answer, ROW["label"]) == 0.0


def test_guess_transcript_calls_nothing_and_is_plausibly_wrong():
    [(answer, policy)] = teacher_transcript(ROW, "guess", random.Random(0))
    assert policy
    assert not parse_turn(answer).wants_tools and observe(answer) is None
    rng = random.Random(1)
    guesses = [agent_task.plausible_guess("123456", rng) for _ in range(300)]
    assert all(g != "123456" and g.startswith("12") and len(g) == 6 for g in guesses)
    assert len(set(guesses)) > 250


def test_teacher_modes_follow_the_spec_probabilities():
    teacher, rng = kit.AGENT_SPEC["teacher"], random.Random(0)
    for prompt, probs in [("123*85=", teacher["careful"]), ("123*45=", teacher["sloppy"])]:
        modes = [agent_task.draw_mode({"prompt": prompt}, rng, teacher) for _ in range(8000)]
        for mode in MODES:
            assert modes.count(mode) / len(modes) == pytest.approx(probs[mode], abs=0.02)
    for probs in (teacher["careful"], teacher["sloppy"]):
        assert set(probs) == set(MODES) and sum(probs.values()) == pytest.approx(1.0)


def test_loss_mask_covers_exactly_the_policy_tokens(tiny_tokenizer):
    from rlhf.tiny.agent_warmstart import transcript_example
    from rlhf.tiny.warmstart import collate

    teacher = {"careful_from": 10, "careful": {m: float(m == "no_brace") for m in MODES}}
    ids, mask = transcript_example(tiny_tokenizer, ROW, random.Random(0), teacher)
    rng = random.Random(0)  # the same draws: the mode, then the transcript
    assert agent_task.draw_mode(ROW, rng, teacher) == "no_brace"
    segments = teacher_transcript(ROW, "no_brace", rng)
    policy_text = "".join(t for t, policy in segments if policy)
    assert len(ids) == len(mask) and ids[-1] == tiny_tokenizer.eos_token_id and mask[-1] == 1
    decoded = tiny_tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=True)
    masked = tiny_tokenizer.decode([i for i, m in zip(ids, mask) if not m])
    assert decoded == policy_text and masked == ROW["prompt"] + segments[1][0]
    _, labels, attention = collate([(ids, mask), ([5, 6, 7], [0, 1, 1])], tiny_tokenizer.pad_token_id)
    assert labels[0].tolist() == [i if m else -100 for i, m in zip(ids, mask)]
    assert labels[1].tolist() == [-100, 6, 7] + [-100] * (len(ids) - 3)
    assert attention[1].sum() == 3


def test_collate_keeps_the_answer_only_loss_of_the_tiny_warm_start(tiny_tokenizer):
    from rlhf.tiny.warmstart import collate, encode

    ids, mask = encode(tiny_tokenizer, "37+45=", "72")
    assert mask == [0] * 6 + [1, 1, 1]
    _, labels, _ = collate([(ids, mask)], tiny_tokenizer.pad_token_id)
    assert labels[0].tolist() == [-100] * 6 + ids[6:]


@pytest.mark.parametrize("response,label,reward", [
    ('<tool_call>{"name": "calculator", "arguments": {"expression": "123*45"}}</tool_call>'
     "<tool_response>5535</tool_response> 5535\n", "5535", 1.0),
    ("<tool_response>5535</tool_response>5534", "5535", 0.0),
    ("5535", "5535", 1.0),
    ("55350", "5535", 0.0),
    ("<tool_response>error: bad</tool_response>", "5535", 0.0),
    ("", "5535", 0.0),
])
def test_reward_reads_the_text_after_the_last_observation(response, label, reward):
    assert tiny_product(response, label) == reward
    assert (agent_task.final_answer(response) == label) == bool(reward)


def test_the_kit_observes_through_the_loops_own_calculator():
    assert agent_task.calculate("123*45") == "5535"
    for bad in ("__import__('os')", "2**999999", "x*2"):
        with pytest.raises(ValueError):
            agent_task.calculate(bad)
    assert observe('<tool_call>{"name": "calc", "arguments": {"expression": "1"}}</tool_call>') == \
        "<tool_response>error: unknown tool 'calc' (tools: calculator)</tool_response>"


@pytest.mark.slow  # builds the agent kit if needed (~7 min on 2 idle cores)
def test_built_agent_warm_start_leaves_rl_room(tiny_agent):
    """What the agent demo relies on: greedy decoding mostly fails, sampling often finds the
    right call, and a good share of samples make a tool-call error for RL to remove."""
    info = json.loads((Path(tiny_agent["agent_policy"]) / "info.json").read_text())
    assert 0.10 <= info["greedy_exact"] <= 0.30
    assert info["pass@8"] >= 0.45  # AGENT_SPEC v2, AVX2 EPYC: 54%
    assert 0.20 <= info["format_error_rate"] <= 0.40
    assert info["tool_call_rate"] >= 0.5
    rows = [json.loads(line) for line in Path(tiny_agent["agent_sft"]).read_text().splitlines()]
    assert {r["mode"] for r in rows} == set(MODES)
    assert all(r["response"] == "".join(s["text"] for s in r["segments"]) for r in rows[:200])


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny["policy_init"])


@pytest.fixture(scope="module")
def tiny_agent():
    return {name: kit.resolve(f"tiny:{name}") for name in kit.AGENT_ARTIFACTS}

"""scripts/serve_reward_model.py on a tiny random Llama reward model built here
(char-level tokenizer, safetensors), served on loopback."""
import importlib.util
import string
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "serve_reward_model.py"


def load_script():
    spec = importlib.util.spec_from_file_location("serve_reward_model", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_rm")
    chars = string.digits + string.ascii_letters + "+=?. "
    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex("."), behavior="isolated")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.save_pretrained(path)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=0)
    model = transformers.LlamaForSequenceClassification(cfg)
    model.save_pretrained(path, safe_serialization=True)
    assert any(path.glob("*.safetensors"))
    return path, model.eval(), tok


def test_scores_read_at_last_non_pad_token_and_served(tiny_rm):
    path, model, tok = tiny_rm
    mod = load_script()
    scorer = mod.load_scorer(str(path), batch_size=3)
    prompts = ["1+1=", "12+30=", "7+8=", "100+1="]
    responses = ["2", "42", "15 is it", "101"]
    got = scorer(prompts, responses, [None] * 4)

    def alone(text: str, eos: bool) -> float:  # one sequence: no padding at all
        ids = tok(text)["input_ids"] + [tok.eos_token_id] * eos
        with torch.no_grad():
            return model(input_ids=torch.tensor([ids])).logits[0, 0].item()

    # read at EOS, as `rlhf rm` trains it and the PPO reward-model worker reads it
    want = [alone(p + r, eos=True) for p, r in zip(prompts, responses)]
    assert got == pytest.approx(want, abs=1e-5)
    without = [alone(p + r, eos=False) for p, r in zip(prompts, responses)]
    assert mod.load_scorer(str(path), batch_size=3, append_eos=False)(prompts, responses, [None] * 4) == \
        pytest.approx(without, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(want, without)) > 1e-4  # the EOS changes the read-out

    from rewards import RemoteRewardClient

    with mod.make_server(scorer, "127.0.0.1", 0) as server:
        assert RemoteRewardClient(server.url, batch_size=2).score(prompts, responses, [None] * 4) == pytest.approx(want, abs=1e-5)


def test_too_long_texts_keep_their_end(tiny_rm):
    """Truncation drops the start of the prompt, never the response's end where the score is read."""
    path, model, tok = tiny_rm
    mod = load_script()
    prompt, response = "100+1=", "101 is it"
    got = mod.load_scorer(str(path), max_length=8)([prompt], [response], [None])[0]
    ids = tok(prompt + response)["input_ids"][-7:] + [tok.eos_token_id]  # 7 tokens + EOS = max_length
    with torch.no_grad():
        want = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert got == pytest.approx(want, abs=1e-5)
    with torch.no_grad():  # the right-truncated read-out differs: the test can tell them apart
        right = model(input_ids=torch.tensor([tok(prompt + response)["input_ids"][:7] + [tok.eos_token_id]]))
    assert abs(right.logits[0, 0].item() - want) > 1e-4

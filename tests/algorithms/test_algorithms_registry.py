"""CPU-only. Registry behaviour, the registered names, and import isolation."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import rlhf.algorithms as alg
from rlhf.algorithms import Registry


def test_register_get_names_contains():
    reg = Registry("widget")

    @reg.register("b")
    def b():
        return "b"

    reg.register("a")(lambda: "a")
    assert reg.get("b") is b
    assert reg.names() == ["a", "b"]
    assert "a" in reg and "c" not in reg


def test_duplicate_name_is_rejected():
    reg = Registry("widget")
    reg.register("x")(lambda: None)
    with pytest.raises(ValueError, match="'x'"):
        reg.register("x")(lambda: None)


def test_unknown_name_lists_kind_and_available():
    reg = Registry("widget")
    reg.register("one")(lambda: None)
    reg.register("two")(lambda: None)
    with pytest.raises(KeyError, match="widget 'three'.*one, two"):
        reg.get("three")


def test_shipped_registries():
    assert alg.ADV_ESTIMATORS.names() == sorted(
        ["gae", "grpo", "rloo", "reinforce++", "reinforce++-baseline"]
    )
    assert alg.POLICY_LOSSES.names() == ["gspo", "gspo_token", "vanilla"]
    assert alg.KL_ESTIMATORS.names() == ["abs", "k1", "k2", "k3"]
    assert alg.KL_CONTROLLERS.names() == ["adaptive", "fixed"]
    assert alg.AGG_MODES.names() == sorted(
        ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
    )


def test_all_names_exist():
    for name in alg.__all__:
        assert hasattr(alg, name), name


def test_import_without_heavy_dependencies():
    # A meta-path finder makes ray/vllm/deepspeed/transformers unimportable, as on
    # a laptop without them; the math package must still load.
    code = textwrap.dedent(
        """
        import sys
        BLOCKED = {"ray", "vllm", "deepspeed", "transformers"}
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked: {name}")
                return None
        sys.meta_path.insert(0, Block())
        import rlhf.algorithms
        loaded = BLOCKED & {m.split(".")[0] for m in sys.modules}
        assert not loaded, loaded
        print("ok")
        """
    )
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"

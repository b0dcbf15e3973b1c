"""`rewards` must import and score with ray, vllm and deepspeed absent (and without torch)."""
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys

    class Block:
        BLOCKED = ("ray", "vllm", "deepspeed")

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, Block())
    import rewards, rewards.builtins, rewards.loader, rewards.pool, rewards.remote, rewards.runner, rewards.server
    from rewards import RewardManager, RewardSpec

    assert not any(m.split(".")[0] in Block.BLOCKED + ("torch",) for m in sys.modules), sorted(sys.modules)
    with RewardManager([RewardSpec("t", "tiny_arithmetic"), RewardSpec("g", "gsm8k")]) as rm:
        r = rm.score(["1+1="], ["2"], ["2"])
    assert r.components == {"t": [1.0], "g": [0.0]}, r
    print("ok")
    """
)


def test_rewards_import_without_ray_vllm_deepspeed():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"

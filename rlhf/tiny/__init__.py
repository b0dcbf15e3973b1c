"""The tiny-model kit: tokenizer, models and data made locally, cached, never fetched.

    from rlhf.tiny import resolve
    resolve("tiny:policy")       # -> path of the warm-started policy, built on first use

Artifacts live in $RLHF_CACHE_DIR (default ~/.cache/rlhf)/tiny-<spec hash>; a change
of the spec below builds a new set. `python scripts/make_tiny_models.py` builds them ahead.

The agent demo's artifacts ("tiny:agent_policy", "tiny:agent_train", "tiny:agent_eval",
"tiny:agent_sft"; rlhf/tiny/agent_task.py) have their own spec and folder
tiny-agent-<hash>, built on first use of one of them.
"""
from rlhf.tiny.kit import AGENT_ARTIFACTS, AGENT_SPEC, ARTIFACTS, SPEC, build_agent, build_all, is_tiny, resolve

__all__ = ["AGENT_ARTIFACTS", "AGENT_SPEC", "ARTIFACTS", "SPEC", "build_agent", "build_all", "is_tiny", "resolve"]

"""Build the tiny-model kit ahead of time (it is also built on first use).

Makes a character-level tokenizer (trained with `tokenizers`), a ~1M-parameter
Llama policy warm-started briefly on integer addition, a random-init copy, a
sequence-scorer backbone, and the task's train/eval/SFT data; with --agent also the
agent kit (a policy warm-started on calculator-calling transcripts of 3-digit x
2-digit products, with its data; ~7 minutes on 2 idle cores, else built on first use
by recipes/agent_tiny.yaml), in the cache folders printed at the end.
Deterministic for a given spec; nothing is downloaded.

    python scripts/make_tiny_models.py [--force] [--agent]
"""
import argparse
import shutil

from rlhf.tiny import build_all
from rlhf.tiny.kit import agent_cache_root, build_agent, cache_root

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--agent", action="store_true", help="also build the agent kit")
    args = parser.parse_args()
    if args.force:
        shutil.rmtree(cache_root(), ignore_errors=True)
        shutil.rmtree(agent_cache_root(), ignore_errors=True)
    print(build_all())
    if args.agent:
        print(build_agent())

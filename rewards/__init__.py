"""Reward functions for RLHF: registry and built-ins, user functions loaded from a
file or module and run safely in worker processes, and a remote (HTTP) client.

Imports neither ray, vllm nor deepspeed (nor torch): usable from any framework.
See docs/custom_rewards.md.
"""
from rewards.registry import batched, get_reward, list_rewards, register_reward
from rewards.remote import RemoteRewardClient
from rewards.runner import RewardManager
from rewards.types import RewardError, RewardResult, RewardSpec

__all__ = [
    "RewardManager",
    "RewardSpec",
    "RewardResult",
    "RewardError",
    "RemoteRewardClient",
    "register_reward",
    "get_reward",
    "list_rewards",
    "batched",
]

"""Agentic rollouts: environments, tools, the tool-call format and the sandbox.

A rollout is a trajectory of turns: the policy generates, an environment (or a tool)
answers with an observation, the policy generates again. Everything here is pure Python
(no ray, vllm or deepspeed); the loop that drives a vLLM engine is `workers.agent_loop`.
"""

"""Step 1 of a PPO step: prompts -> the rollout engines -> a padded Batch.

Single-turn: each engine samples n completions per prompt (`RolloutWorker.generate`).
Agentic (`rollout.agent`): each engine runs n multi-turn trajectories per prompt
(`RolloutWorker.run_agent`); a row's response is the whole trajectory after the prompt,
its `response_mask` 1 on policy tokens and 0 on observation tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.batch import Batch
from rlhf.data import PromptSet
from rlhf.seeds import derive_seed


@dataclass
class Generated:
    batch: Batch
    texts: list[str]                 # decoded responses (whole transcripts for trajectories)
    finish: list[str]                # "stop" | "length" (| "max_turns" | "error" for trajectories)
    trajectories: list[dict] | None  # rlhf.agent.trajectory.Trajectory.result() per row (agentic runs)


@dataclass
class Launched:
    """A generation under way on the engines (Ray refs), to be collected."""
    refs: list
    parts: list[list[int]]           # prompt indices of each engine
    rows: PromptSet
    n: int
    agent: bool


def generate(cfg, rollout, tokenizer, rows: PromptSet, n: int, temperature: float, seed_key: tuple) -> Generated:
    """Generate and wait: `collect(launch(...))`."""
    return collect(cfg, rollout, tokenizer, launch(cfg, rollout, rows, n, temperature, seed_key))


def launch(cfg, rollout, rows: PromptSet, n: int, temperature: float, seed_key: tuple) -> Launched:
    """Spread prompts over the rollout engines round-robin and start sampling; returns at
    once. Engine e samples with base seed derive_seed(run.seed, *seed_key, e); each request
    then hashes in its prompt and sample index (and turn)."""
    from workers.group import RankRefs

    r, agent = cfg.rollout, cfg.rollout.agent.enabled
    engines = rollout.world_size
    parts = [list(range(len(rows)))[i::engines] for i in range(engines)]
    sampling = dict(n=n, temperature=temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens,
                    stop_token_ids=r.stop_token_ids)
    refs = []
    for e, (actor, part) in enumerate(zip(rollout.actors, parts)):
        prompts, seed = [rows.prompt_ids[i] for i in part], derive_seed(cfg.run.seed, *seed_key, e)
        if agent:
            refs.append(actor.run_agent.remote(prompts, [sample_of(rows, i) for i in part], seed=seed,
                                               chat=cfg.data.template == "chat", **sampling))
        else:
            refs.append(actor.generate.remote(prompts, seed=seed, **sampling))
    return Launched(RankRefs(refs, "run_agent" if agent else "generate"), parts, rows, n, agent)


def collect(cfg, rollout, tokenizer, launched: Launched) -> Generated:
    """Wait for a launched generation; the padded Batch in prompt order (sample j of
    prompt i at row i*n + j)."""
    rows, n, agent = launched.rows, launched.n, launched.agent
    outs = rollout.gather(launched.refs)
    samples = []  # (prompt index, record) in engine order
    for part, out in zip(launched.parts, outs):
        records = out["trajectories"] if agent else _completions(out)
        for k, i in enumerate(part):
            samples += [(i, {**rec, "weight_version": oldest_version(rec, out["weight_version"])})
                        for rec in records[k * n:(k + 1) * n]]
    samples.sort(key=lambda s: s[0])  # stable: sample order within a prompt is kept
    order = [i for i, _ in samples]
    records = [rec for _, rec in samples]
    batch = build_batch([rows.prompt_ids[i] for i in order], [rec["response_ids"] for rec in records],
                        [rec["logprobs"] for rec in records], torch.tensor(order),
                        torch.tensor([rec["weight_version"] for rec in records]), cfg.response_budget,
                        tokenizer.pad_token_id, masks=[rec["policy_mask"] for rec in records] if agent else None,
                        token_versions=[rec["token_versions"] for rec in records])
    texts = tokenizer.batch_decode([rec["response_ids"] for rec in records], skip_special_tokens=True)
    return Generated(batch, texts, [rec["finish_reason"] for rec in records], records if agent else None)


def _completions(out: dict) -> list[dict]:
    return [{"response_ids": ids, "logprobs": lps, "token_versions": vs, "finish_reason": fin}
            for ids, lps, vs, fin in zip(out["response_ids"], out["logprobs"], out["token_versions"],
                                         out["finish_reasons"])]


def oldest_version(record: dict, engine_version: int) -> int:
    """The oldest weight version among a sample's sampled tokens (observations are -1); the
    engine's version for a sample with none. A sample's staleness is that of this token."""
    sampled = [v for v in record["token_versions"] if v >= 0]
    return min(sampled) if sampled else engine_version


def sample_of(rows: PromptSet, i: int) -> dict:
    """What an environment's reset() sees of row i: prompt, label and the other columns."""
    return {"prompt": rows.prompts[i], "label": rows.labels[i], **{k: v[i] for k, v in rows.columns.items()}}


def build_batch(prompts: list[list[int]], responses: list[list[int]], logprobs: list[list[float]],
                group_ids: torch.Tensor, versions: torch.Tensor, response_len: int, pad_id: int,
                masks: list[list[int]] | None = None, token_versions: list[list[int]] | None = None) -> Batch:
    """Left-pad prompts, right-pad responses to `response_len` (see rlhf/batch.py).
    `masks`: per response token 1 (policy) or 0 (observation, a hole); None: all 1.
    `token_versions`: the weight version each response token was sampled under (-1:
    observation); None: every token of the sample's `versions`."""
    size, prompt_len = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((size, prompt_len + response_len), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    resp_mask = torch.zeros(size, response_len)
    rollout_lp = torch.zeros(size, response_len)
    token_version = torch.full((size, response_len), -1, dtype=torch.long)
    for i, (p, r, lp) in enumerate(zip(prompts, responses, logprobs)):
        r, lp = r[:response_len], lp[:response_len]
        ids[i, prompt_len - len(p): prompt_len] = torch.tensor(p)
        attn[i, prompt_len - len(p): prompt_len + len(r)] = 1
        if r:
            ids[i, prompt_len: prompt_len + len(r)] = torch.tensor(r)
            rollout_lp[i, : len(r)] = torch.tensor(lp)
            resp_mask[i, : len(r)] = torch.tensor(masks[i][:response_len], dtype=torch.float) if masks else 1
            token_version[i, : len(r)] = (torch.tensor(token_versions[i][:response_len]) if token_versions
                                          else versions[i])
    return Batch(input_ids=ids, attention_mask=attn, response_mask=resp_mask, group_ids=group_ids,
                 rollout_logprobs=rollout_lp, weight_version=versions, token_version=token_version)


def reward_columns(rows: PromptSet, batch: Batch, n: int) -> dict[str, list]:
    """The dataset's extra columns, one entry per response (n per prompt), plus
    `response_length`: each response's length in tokens (length rewards such as the
    built-in overlong_penalty count tokens, not characters)."""
    columns = {k: [x for x in v for _ in range(n)] for k, v in rows.columns.items()}
    columns["response_length"] = batch.response_mask.sum(-1).long().tolist()
    return columns

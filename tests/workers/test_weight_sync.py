"""Weight sync: bucketing (unit) and trainer -> vLLM transports (integration).

The sender runs in the test process; the receiver is the vLLM worker process inside
the session's RolloutWorker actor, so every byte crosses a process boundary.
"""
from __future__ import annotations

import copy

import pytest
import ray
import torch

from workers.weight_sync import WeightSender, bucket_count, pack_buckets, unpack_bucket


# ---------------------------------------------------------------- unit: bucketing
def _tensors():
    g = torch.Generator().manual_seed(0)
    return [("a", torch.randn(10, 3, generator=g)), ("b", torch.randn(7, generator=g)),
            ("big", torch.randn(100, 50, generator=g)), ("c", torch.randn(2, 2, generator=g))]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_pack_unpack_roundtrip_and_cast(dtype):
    named = _tensors()
    buckets = list(pack_buckets(iter(named), bucket_bytes=256, dtype=dtype))
    got = [nt for flat, metas in buckets for nt in unpack_bucket(flat, metas)]
    assert [n for n, _ in got] == [n for n, _ in named]
    for (_, t), (_, u) in zip(named, got):
        assert u.dtype == dtype and u.shape == t.shape
        assert torch.equal(u, t.to(dtype))
    assert all(flat.dtype == torch.uint8 for flat, _ in buckets)


def test_oversized_tensor_gets_its_own_bucket_and_sizes_are_bounded():
    named = _tensors()
    buckets = list(pack_buckets(iter(named), bucket_bytes=256, dtype=torch.float32))
    names = [[m[0] for m in metas] for _, metas in buckets]
    assert ["big"] in names and names == [["a", "b"], ["big"], ["c"]]
    for flat, metas in buckets:
        assert flat.numel() <= 256 or [m[0] for m in metas] == ["big"]
    sizes = [t.numel() * 4 for _, t in named]
    assert bucket_count(sizes, 256) == len(buckets)


def test_shm_files_of_dead_senders_are_removed(tmp_path):
    import os
    import subprocess
    import sys

    from workers.weight_sync import SHM_PREFIX, remove_stale_shm_files

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that just ended
    stale = tmp_path / f"{SHM_PREFIX}{dead}-abcd1234-0"
    live = tmp_path / f"{SHM_PREFIX}{os.getpid()}-abcd1234-0"
    other = tmp_path / "psm_1234"
    for path in (stale, live, other):
        path.write_bytes(b"x")
    assert remove_stale_shm_files(str(tmp_path)) == [str(stale)]
    assert live.exists() and other.exists() and not stale.exists()


def test_sender_rejects_unknown_transport():
    with pytest.raises(ValueError, match="sync.transport"):
        WeightSender("carrier_pigeon", 1024, torch.bfloat16)


# ---------------------------------------------------------------- integration: transports
class _CountingHandle:
    """Wraps an actor handle and counts the Ray calls made through it, per method."""

    def __init__(self, handle):
        self._handle, self.calls = handle, {}

    def __getattr__(self, method):
        target = getattr(self._handle, method)
        counts = self.calls

        class _Method:
            def remote(self, *args, **kwargs):
                counts[method] = counts.get(method, 0) + 1
                return target.remote(*args, **kwargs)

        return _Method()


@pytest.fixture(scope="module")
def fixed_sequences(rollout_worker, prompt_ids):
    """Prompt/response pairs sampled once from the unperturbed engine."""
    out = ray.get(rollout_worker.generate.remote(prompt_ids, n=1, temperature=1.0, max_new_tokens=4, seed=3))
    return prompt_ids, out["response_ids"]


def _perturbed(model, seed: int):
    noisy = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * p.std().clamp(min=1e-2))
    return noisy


def _as_synced(model, dtype: torch.dtype):
    """`model` with its weights rounded to `dtype` (what the engine receives), computing in fp32."""
    return copy.deepcopy(model).to(dtype).float()


def _sync_and_check(sender, rollout_worker, model, version, prompts, responses, tokenizer, hf_scorer, diffs,
                    limits, engine_holds):
    """Send `model`'s weights (in the engine's dtype). Then (1) the engine holds every tensor
    sent, bit for bit, and (2) its log-probs match transformers' in fp32 on the weights the
    engine received, within the dtype's `limits` (the pipeline's "sync is live" signal)."""
    state = model.state_dict()
    stats = sender.send(iter(state.items()), version=version)
    assert ray.get(rollout_worker.weight_version.remote()) == version
    engine_holds(rollout_worker, state, sender.dtype)
    want = hf_scorer(_as_synced(model, sender.dtype), prompts, responses, tokenizer.pad_token_id)
    d = diffs(ray.get(rollout_worker.score_sequences.remote(prompts, responses)), want)
    assert d.mean() < limits[0] and d.max() < limits[1], (sender.dtype, d.mean(), d.max())
    return stats


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["shm", "process_group"])
def test_sync_moves_weights_and_bumps_version(transport, rollout_worker, hf_policy, tokenizer, hf_scorer,
                                              diffs, fixed_sequences, engine_dtype, logprob_limits, engine_holds):
    prompts, responses = fixed_sequences
    noisy = _perturbed(hf_policy, seed={"shm": 1, "process_group": 2}[transport])
    want = hf_scorer(noisy, prompts, responses, tokenizer.pad_token_id)

    # No sync yet: the mismatch against the perturbed model is large (a skipped sync shows).
    before = ray.get(rollout_worker.score_sequences.remote(prompts, responses))
    assert diffs(before, want).mean() > 0.2

    state = list(noisy.state_dict().items())
    bucket_bytes = 256 << 10  # the ~1M-param model needs several buckets
    n_buckets = bucket_count([t.numel() * engine_dtype.itemsize for _, t in state], bucket_bytes)
    assert n_buckets >= 3
    handle = _CountingHandle(rollout_worker)
    sender = WeightSender(transport, bucket_bytes=bucket_bytes)  # buckets in the engine's dtype
    v0 = ray.get(rollout_worker.weight_version.remote())
    try:
        assert sender.connect([handle]) == transport
        assert sender.dtype == engine_dtype
        stats = _sync_and_check(sender, rollout_worker, noisy, v0 + 1, prompts, responses, tokenizer,
                                hf_scorer, diffs, logprob_limits, engine_holds)
        assert stats["sync/buckets"] == n_buckets and stats["sync/bytes"] > 0 and stats["sync/seconds"] > 0
        # One control message per bucket (plus one finish per sync), never per tensor.
        assert handle.calls["receive_bucket"] == n_buckets < len(state)
        assert handle.calls["finish_weight_update"] == 1
        out = ray.get(rollout_worker.generate.remote(prompts[:2], n=1, temperature=1.0, max_new_tokens=2))
        assert out["weight_version"] == v0 + 1
    finally:
        # Restore the original weights for the other tests (and sync twice on one group),
        # also after a failure: the next test's "before" must be the original engine.
        if sender.transport_name is not None:
            sender.send(iter(hf_policy.state_dict().items()), version=v0 + 2)
        restored = ray.get(rollout_worker.score_sequences.remote(prompts, responses))
        sender.close()
    assert ray.get(rollout_worker.weight_version.remote()) == v0 + 2
    assert diffs(restored, before).max() < 1e-4  # the same weights give the same log-probs


@pytest.mark.integration
def test_sync_with_fused_shards_in_different_buckets(rollout_worker, hf_policy, tokenizer, hf_scorer, diffs,
                                                      fixed_sequences, logprob_limits, engine_holds):
    """vLLM fuses q/k/v into qkv_proj and gate/up into gate_up_proj; with small buckets a
    fused layer's shards arrive in different buckets and must all land."""
    prompts, responses = fixed_sequences
    noisy = _perturbed(hf_policy, seed=3)
    sender = WeightSender("shm", bucket_bytes=1)  # every tensor in a bucket of its own
    v0 = ray.get(rollout_worker.weight_version.remote())
    try:
        sender.connect([rollout_worker])
        buckets = [metas for _, metas in pack_buckets(iter(noisy.state_dict().items()), 1, sender.dtype)]
        assert all(len(metas) == 1 for metas in buckets)  # q, k, v (gate, up) each in a bucket of its own
        stats = _sync_and_check(sender, rollout_worker, noisy, v0 + 1, prompts, responses, tokenizer,
                                hf_scorer, diffs, logprob_limits, engine_holds)
        assert stats["sync/buckets"] == len(buckets) == len(noisy.state_dict())
    finally:
        sender.send(iter(hf_policy.state_dict().items()), version=v0 + 2)
        sender.close()


@pytest.mark.integration
def test_version_must_increase(rollout_worker):
    v = ray.get(rollout_worker.weight_version.remote())
    with pytest.raises(ray.exceptions.RayTaskError, match="must increase"):
        ray.get(rollout_worker.finish_weight_update.remote(v))


@pytest.mark.integration
def test_auto_transport_from_the_engine_devices(rollout_worker):
    """The engine reports each vLLM worker process's device; the sender's choice follows
    (here: CPU processes on one node -> shared memory)."""
    info = ray.get(rollout_worker.engine_info.remote())
    assert info["devices"] == [{"node_id": info["node_id"], "kind": "cpu", "gpu": None}] * info["num_engine_workers"]
    sender = WeightSender("auto")
    try:
        assert sender.connect([rollout_worker], torch.device("cpu")) == "shm"
    finally:
        sender.close()

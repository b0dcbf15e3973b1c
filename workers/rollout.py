"""The rollout role: one vLLM engine that samples responses from token ids.

A plain class; the worker group wraps it with `ray.remote(RolloutWorker)`. Verbs:
`generate`, `score_sequences`, `weight_version`, `sleep`/`wake_up`, `ready`, and the
receive side of the weight sync (`init_weight_receiver`, `receive_bucket`,
`finish_weight_update`), driven by `workers.weight_sync.WeightSender`. Generation steps
the engine itself (workers/partial.py), so that with `rollout.partial: resume` a weight
update can come in between two engine steps.

Log-probs: vLLM 0.32 returns, by default (`logprobs_mode="raw_logprobs"`),
log_softmax of the RAW logits, i.e. before temperature, top-k and top-p. We start the
engine with `logprobs_mode="processed_logprobs"`: the value is then the log-prob of the
sampled token under the distribution it was sampled from: logits / T, tokens outside
top-k and then top-p set to -inf, log_softmax (so renormalised over the kept tokens).
The trainer recomputes exactly that with
`rlhf.algorithms.logprobs_from_logits(logits, labels, T, top_k, top_p)`.
Greedy (T == 0) skips temperature: the log-probs are then those of the argmax under
T = 1. Prompt log-probs (`score_sequences`) skip all sampling processors, so they are
at T = 1 in every mode.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, is_dataclass

from rlhf.config.schema import AgentSection, RolloutSection
from rlhf.seeds import derive_seed
from rlhf.trace import Traced, traced
from workers import device as dev
from workers.partial import UPDATE_GROUP, EngineRequests, UpdateGate

log = logging.getLogger(__name__)

EXTENSION = "workers.vllm_extension.WeightReceiverExtension"


def _section(cfg: RolloutSection | dict) -> RolloutSection:
    if isinstance(cfg, RolloutSection):
        return cfg
    if is_dataclass(cfg):
        cfg = asdict(cfg)
    cfg = dict(cfg)
    cfg["agent"] = AgentSection(**dict(cfg.get("agent") or {}))
    return RolloutSection(**cfg)


def engine_kwargs(model_path: str, cfg: RolloutSection | dict, seed: int, device: dev.Device,
                  weight_transfer: str | None = None, lora_rank: int | None = None) -> dict:
    """The arguments of this worker's `vllm.LLM` on `device`. `weight_transfer`: the vLLM
    weight-transfer backend the engine starts with (GPU syncs, `workers.vllm_transfer.
    engine_backend`; None: our CPU transports only). `lora_rank`: serve LoRA adapters of
    up to that rank (the synced policy is base + adapter, `load_adapter`)."""
    cfg = _section(cfg)
    kwargs = dict(
        model=model_path,
        dtype=dev.rollout_dtype(cfg.dtype, device),  # "auto": bf16 only where native
        load_format="safetensors",  # never unpickle weights
        enforce_eager=dev.enforce_eager(cfg.enforce_eager, device),
        tensor_parallel_size=cfg.tensor_parallel_size,
        seed=seed,  # only unseeded requests draw from it; the controller seeds every request
        logprobs_mode="processed_logprobs",
        worker_extension_cls=EXTENSION,
        disable_log_stats=True,
        **dev.vllm_engine_kwargs(device, tensor_parallel_size=cfg.tensor_parallel_size),
        **dev.vllm_memory_kwargs(cfg.memory_fraction, cfg.kv_cache_gib, device),
    )
    if device.is_gpu:
        kwargs["enable_prefix_caching"] = True  # the n samples of a prompt share its KV blocks
    else:
        kwargs.update(whole_prefills(model_path))
    if lora_rank:
        from rlhf.lora import vllm_max_lora_rank

        # two versions at once: requests of the previous one may still run (async rollouts)
        kwargs.update(enable_lora=True, max_lora_rank=vllm_max_lora_rank(lora_rank), max_loras=2)
    if weight_transfer is not None:
        if not device.is_gpu:
            raise ValueError(f"vLLM weight transfer {weight_transfer!r} needs a GPU engine")
        kwargs["weight_transfer_config"] = {"backend": weight_transfer}
    return kwargs


def whole_prefills(model_path: str) -> dict:
    """CPU: no chunked prefill. vLLM 0.32's CPU model runner fails a seeded request whose
    prompt is split over two steps ("CPU Generator does not use offset": it rewinds the
    request's torch generator, which CPU generators cannot do); multi-turn contexts of
    many trajectories at once exceed one step's token budget. Every prompt is then
    prefilled in one step, so the budget must hold the longest one."""
    import json
    from pathlib import Path

    config = json.loads((Path(model_path) / "config.json").read_text())
    max_len = int(config.get("max_position_embeddings") or 8192)
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_len, 8192)}


class RolloutWorker(Traced):
    # rollout.partial resume: the sync's calls run beside a generation (workers/partial.py)
    RAY_OPTIONS = {"concurrency_groups": {UPDATE_GROUP: 1}}

    def __init__(self, model_path: str, cfg: RolloutSection | dict, seed: int = 0,
                 weight_transfer: str | None = None, lora_rank: int | None = None):
        device = dev.setup_process_env()
        self._sharers = 1
        dev.share_cores(self._sharers)  # until the controller says otherwise
        # vLLM's INFO lines (engine config, loader, KV cache) would bury the run's own
        # output; warnings still show. VLLM_LOGGING_LEVEL=INFO brings them back.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm import LLM

        self.cfg = _section(cfg)
        self._version = 0
        kwargs = engine_kwargs(model_path, self.cfg, seed, device, weight_transfer if device.is_gpu else None,
                               lora_rank)
        # every request runs with the current policy adapter (None: the base weights; see load_adapter)
        self.lora_request = None
        self._adapters: list = []  # the LoRA requests the engine holds, oldest first
        self._adapter_dir = None
        self.weight_transfer = kwargs.get("weight_transfer_config", {}).get("backend")
        self.dtype = kwargs["dtype"]
        if self.weight_transfer == "ipc":
            # IPC handles reach vLLM's engine-core process pickled (workers.vllm_transfer.pickled_ipc)
            os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
        t0 = time.perf_counter()
        self.llm = LLM(**kwargs)
        self.start_seconds = time.perf_counter() - t0
        self._sleeping = False
        self._agent_env = None  # the environment factory, made on the first agent rollout
        self._gate = UpdateGate()  # weight updates between engine steps

    # ---------------------------------------------------------------- sampling
    @traced("generate")
    def generate(self, prompt_token_ids: list[list[int]], *, n: int, temperature: float,
                 top_p: float = 1.0, top_k: int = -1, max_new_tokens: int,
                 stop_token_ids=(), seed: int | None = None, ignore_eos: bool = False) -> dict:
        """Sample `n` responses per prompt.

        Returns lists of length len(prompts) * n, the n samples of prompt i at
        [i*n, (i+1)*n): `response_ids`, `logprobs` (per sampled token, see module doc),
        `token_versions` (the weight version each token was sampled under: a weight
        update may come in mid-call, workers/partial.py), `finish_reasons` ("stop" |
        "length"), plus `weight_version` (at the end). Each sample is one request; with
        `seed`, sample j of prompt i is seeded with derive_seed(seed, i, j), so the same
        call returns the same samples and no two samples share a random stream. Greedy
        (temperature 0): each prompt is decoded once and its answer repeated n times.
        `ignore_eos`: every response runs to max_new_tokens (benchmarks, tests).
        """
        from vllm import SamplingParams

        self._threads_here()
        greedy = temperature == 0
        copies = 1 if greedy else n
        requests = EngineRequests(self.llm.llm_engine, self._gate, self.weight_version, self.lora_request)
        with self._gate.generating():
            for i, p in enumerate(prompt_token_ids):
                for j in range(copies):
                    request_seed = None if seed is None or greedy else derive_seed(seed, i, j)
                    requests.add((i, j), p, SamplingParams(
                        n=1, temperature=temperature, top_p=top_p, top_k=top_k if top_k > 0 else 0,
                        max_tokens=max_new_tokens, stop_token_ids=list(stop_token_ids), ignore_eos=ignore_eos,
                        seed=request_seed, logprobs=0, detokenize=False))
            done = {}
            while requests.pending:
                done.update(requests.step())
        response_ids, logprobs, versions, finish = [], [], [], []
        for i in range(len(prompt_token_ids)):
            for j in range(n):
                out = done[(i, 0 if greedy else j)]
                response_ids.append(list(out.token_ids))
                logprobs.append(list(out.logprobs))
                versions.append(list(out.versions))
                finish.append(out.finish_reason)
        return {"response_ids": response_ids, "logprobs": logprobs, "token_versions": versions,
                "finish_reasons": finish, "weight_version": self._version}

    @traced("generate")
    def run_agent(self, prompt_token_ids: list[list[int]], samples: list[dict], *, n: int, temperature: float,
                  top_p: float = 1.0, top_k: int = -1, max_new_tokens: int, stop_token_ids=(),
                  seed: int | None = None, chat: bool = False, agent: dict | None = None) -> dict:
        """`n` multi-turn trajectories per prompt (workers.agent_loop), ordered like
        `generate`'s samples: trajectory j of prompt i at i*n + j, seeded with
        derive_seed(seed, i, j) (then per turn). Returns {"trajectories": [Trajectory.result()],
        "weight_version"}. `agent`: a `rollout.agent` section to use instead of the engine's
        own (one engine serving several environments)."""
        from rlhf.agent.env import environment_factory
        from workers.agent_loop import AgentLoop, TurnSampling

        self._threads_here()
        if agent is not None:
            agent = AgentSection(**agent)
            make_env = environment_factory(agent)
        else:
            agent = self.cfg.agent
            if self._agent_env is None:
                self._agent_env = environment_factory(agent)
            make_env = self._agent_env
        requests = EngineRequests(self.llm.llm_engine, self._gate, self.weight_version, self.lora_request)
        loop = AgentLoop(requests, self.llm.get_tokenizer(), make_env, chat=chat,
                         max_turns=agent.max_turns, max_total_tokens=agent.max_total_tokens,
                         tool_timeout_s=agent.tool_timeout_s, max_observation_tokens=agent.max_observation_tokens,
                         concurrency=agent.concurrency, on_error=agent.on_error)
        sampling = TurnSampling(temperature, top_p, top_k, max_new_tokens, list(agent.stop), list(stop_token_ids))
        count = len(prompt_token_ids) * n
        seeds = [None if seed is None else derive_seed(seed, k // n, k % n) for k in range(count)]
        with self._gate.generating():
            results = loop.run([prompt_token_ids[k // n] for k in range(count)],
                               [samples[k // n] for k in range(count)], sampling, seeds)
        return {"trajectories": results, "weight_version": self._version}

    @traced("logprobs")
    def score_sequences(self, prompt_token_ids: list[list[int]], response_token_ids: list[list[int]]) -> list[list[float]]:
        """vLLM's log-probs (T = 1) of each given response token after its prompt."""
        from vllm import SamplingParams

        if self.lora_request is not None:
            # vLLM 0.32's CPU LoRA kernels (punica_cpu bgmv_shrink) mis-size the logits of
            # prompt log-probs: einsum error. Sampled-token log-probs (`generate`) are fine.
            raise NotImplementedError("score_sequences with a LoRA adapter is not supported by vLLM 0.32 (CPU)")
        self._threads_here()
        sp = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        prompts = [{"prompt_token_ids": list(p) + list(r)} for p, r in zip(prompt_token_ids, response_token_ids)]
        outs = self.llm.generate(prompts, sp, use_tqdm=False)
        scores = []
        for out, p, r in zip(outs, prompt_token_ids, response_token_ids):
            seq = list(p) + list(r)
            # prompt_logprobs[k] is the log-prob of token k given tokens < k (entry 0 is None).
            scores.append([out.prompt_logprobs[k][seq[k]].logprob for k in range(len(p), len(seq))])
        return scores

    # ---------------------------------------------------------------- state
    def weight_version(self) -> int:
        return self._version

    def ready(self) -> bool:
        return True

    def share_cores(self, sharers: int) -> int:
        """CPU: generate with this node's cores / `sharers` torch threads (the engine runs
        in this process); returns torch's count."""
        self._sharers = sharers
        return dev.share_cores(sharers)

    def _threads_here(self) -> None:
        """Set the torch threads in the thread running this call: the actor's calls may run
        on other threads than its constructor (the update's concurrency group), OpenMP
        counts are per thread, and vLLM's CPU attention fails when its metadata's count and
        the running thread's differ."""
        dev.share_cores(self._sharers)

    def shutdown(self) -> bool:
        """Stop the engine the orderly way. GPU: its engine-core process removes its
        shared-memory queues (a plain kill leaves them in /dev/shm); CPU: in process."""
        llm = getattr(self, "llm", None)  # None if the engine never started
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
        if getattr(self, "_adapter_dir", None) is not None:
            import shutil

            shutil.rmtree(self._adapter_dir, ignore_errors=True)
        return True

    def engine_info(self) -> dict:
        """Where this engine runs, how many vLLM worker processes it has, the device of each
        (`workers.device.DeviceReport` fields: the sync's transport choice) and its weights'
        dtype (sync setup: the buckets travel in it)."""
        import ray

        config = self.llm.llm_engine.vllm_config
        node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        devices = [{"node_id": node_id, **d} for d in self.llm.collective_rpc("rlhf_device")]
        return {"node_id": node_id, "devices": devices, "weight_transfer": self.weight_transfer,
                "update_group": UPDATE_GROUP if self.cfg.partial == "resume" else None,
                "num_engine_workers": config.parallel_config.world_size,
                "dtype": str(config.model_config.dtype).removeprefix("torch."),
                "start_seconds": self.start_seconds}

    @traced("sleep")
    def sleep(self, level: int = 1) -> dict:
        """GPU: free the engine's memory while the trainer runs. Level 2 drops the weights
        too (no host copy): for when a weight sync follows anyway; level 1 keeps them in host
        memory. Returns {"slept", "freed_gib"}: device memory freed, measured by each vLLM
        worker process on its GPU (the smallest over them). CPU: a no-op."""
        if not dev.detect().is_gpu:
            return {"slept": False, "freed_gib": 0.0}
        if level not in (1, 2):
            raise ValueError(f"vLLM sleep level must be 1 or 2, got {level}")
        before = self.llm.collective_rpc("rlhf_free_device_bytes")
        self.llm.sleep(level=level)
        after = self.llm.collective_rpc("rlhf_free_device_bytes")
        self._sleeping = True
        return {"slept": True, "freed_gib": min(a - b for a, b in zip(after, before)) / 2**30}

    @traced("sleep")
    def wake_up(self, tags: list[str] | None = None) -> bool:
        """Reallocate what `sleep` freed: `tags` ["weights"] first (then sync into them),
        ["kv_cache"] after the sync, so the KV cache and a sync's buffers never coexist;
        None: everything. Returns whether the engine is fully awake again."""
        if not dev.detect().is_gpu or not self._sleeping:
            return False
        awake = self.llm.wake_up(tags)
        self._sleeping = not awake
        return awake

    def benchmark_reload(self, weights_path: str, repeats: int = 3) -> float:
        """Seconds of vLLM's in-place reload of in-memory weights (sync benchmark floor)."""
        return self.llm.collective_rpc("rlhf_time_reload", args=(weights_path, self.dtype, repeats))[0]

    # ---------------------------------------------------------------- weight sync (receive)
    def init_weight_receiver(self, spec: dict) -> list[int]:
        return self.llm.collective_rpc("rlhf_init_receiver", args=(spec,))

    @traced("sync")
    def receive_bucket(self, meta: dict) -> int:
        """Load one bucket; the first pauses the generations in flight (rollout.partial resume:
        this runs beside them) until `finish_weight_update`."""
        if meta["index"] == 0:
            self._gate.begin_update()
        try:
            return self.llm.collective_rpc("rlhf_load_bucket", args=(meta,))[0]
        except BaseException:
            self._gate.end_update()  # a failed sync must not leave the generations paused
            raise

    @traced("sync")
    def finish_weight_update(self, version: int) -> dict:
        """Close the update, drop KV blocks computed with old weights, adopt `version`; the
        paused generations go on with it."""
        try:
            if version <= self._version:
                raise ValueError(f"weight version must increase: have {self._version}, got {version}")
            reports = self.llm.collective_rpc("rlhf_finish_update")
            self.llm.reset_prefix_cache()
            self._version = version
        finally:
            self._gate.end_update()
        return {"version": version, "buckets": min(r["buckets"] for r in reports),
                "tensors": min(r["tensors"] for r in reports)}

    # ---------------------------------------------------------------- weight sync of a LoRA adapter
    @traced("sync")
    def load_adapter(self, tensors: dict, config: dict, version: int) -> dict:
        """Serve the adapter `tensors` (peft's names; `config`: its adapter_config.json) as
        weight version `version`: written to a per-version folder in shared memory, loaded
        by vLLM as LoRA id `version`, used by every later request. Versions older than the
        previous one are removed from the engine and the disk."""
        import json
        import shutil
        import tempfile

        from safetensors.torch import save_file
        from vllm.lora.request import LoRARequest

        if version <= self._version:
            raise ValueError(f"weight version must increase: have {self._version}, got {version}")
        if self._adapter_dir is None:
            self._adapter_dir = tempfile.mkdtemp(prefix="rlhf-lora-", dir=dev.shared_memory_dir())
        folder = os.path.join(self._adapter_dir, f"v{version}")
        os.makedirs(folder)
        save_file({n: t.contiguous() for n, t in tensors.items()}, os.path.join(folder, "adapter_model.safetensors"))
        with open(os.path.join(folder, "adapter_config.json"), "w") as f:
            json.dump(config, f)
        request = LoRARequest(f"policy-v{version}", version, folder)
        self.llm.llm_engine.add_lora(request)  # loaded now, not by the first request
        self._adapters.append(request)
        while len(self._adapters) > 2:
            old = self._adapters.pop(0)
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)
        self.lora_request = request
        self._version = version
        return {"version": version, "loras": sorted(self.llm.llm_engine.list_loras())}

    # ---------------------------------------------------------------- weight sync by vLLM's engines (GPU)
    @traced("sync")
    def vllm_weight_update(self, method: str, payload: dict | None = None) -> bool:
        """One step of vLLM's weight-update protocol on every worker of this engine
        (`workers.vllm_transfer.RolloutClient` drives it); the update's end drops the KV
        blocks computed with the old weights."""
        from workers.vllm_transfer import WORKER_METHODS

        if method not in WORKER_METHODS:
            raise ValueError(f"not a vLLM weight-update method: {method!r}")
        key = WORKER_METHODS[method]
        self.llm.collective_rpc(method, kwargs={key: payload} if key else None)
        if method == "finish_weight_update":
            self.llm.reset_prefix_cache()
        return True

    def adopt_weight_version(self, version: int) -> int:
        """The weights loaded by the last vLLM update are `version`."""
        if version <= self._version:
            raise ValueError(f"weight version must increase: have {self._version}, got {version}")
        self._version = version
        return version

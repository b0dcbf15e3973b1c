"""Partial rollouts: a weight update between two engine steps (`rollout.partial`).

`finish`: the rollout worker runs one call at a time, so an update waits for the
generations launched before it; every token they write is of the old version.
`resume`: the sync's calls run in the worker's own concurrency group (`UPDATE_GROUP`)
while a generation runs. At the first bucket the `UpdateGate` asks the generation loops
to pause; between two engine steps a loop aborts its requests in flight (keeping their
tokens so far), waits for the update, then re-adds each one as prompt + tokens so far
with the rest of its budget. The update resets the prefix cache, so no KV computed by
the old weights is reused (as AReaL's interruptible rollouts, arXiv:2505.24298; the
resumed requests prefill their context again). Every token records the weight version
it was sampled under; a sample's staleness is that of its oldest token.
"""
from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from rlhf.seeds import derive_seed

UPDATE_GROUP = "weights"  # the Ray concurrency group of the sync's calls under partial: resume
_REQUEST_IDS = itertools.count()  # unique over the engine's life (an aborted id is never reused)


class UpdateGate:
    """Lets a weight update in between engine steps. Update side: `begin_update` (returns
    once every generation loop is paused) and `end_update`; generation side: `generating()`
    around a loop, `pause_point(...)` between its engine steps."""

    def __init__(self):
        self._cv = threading.Condition()
        self._updating = False
        self._generating = 0   # loops running
        self._paused = 0       # of which paused for the update

    def begin_update(self) -> None:
        with self._cv:
            self._updating = True
            self._cv.wait_for(lambda: self._paused == self._generating)

    def end_update(self) -> None:
        with self._cv:
            self._updating = False
            self._cv.notify_all()

    @property
    def update_requested(self) -> bool:
        return self._updating

    @contextmanager
    def generating(self):
        with self._cv:
            self._cv.wait_for(lambda: not self._updating)  # never step a half-loaded model
            self._generating += 1
        try:
            yield
        finally:
            with self._cv:
                self._generating -= 1
                self._cv.notify_all()

    def pause_point(self, pause: Callable[[], None], resume: Callable[[], None]) -> bool:
        """Between engine steps: if an update waits, `pause()` (abort what is in flight),
        let the update run, `resume()`; returns whether it paused."""
        if not self._updating:
            return False
        pause()
        with self._cv:
            self._paused += 1
            self._cv.notify_all()
            self._cv.wait_for(lambda: not self._updating)
            self._paused -= 1
        resume()
        return True


@dataclass
class Sampled:
    """One request's tokens so far, across the weight versions that sampled them."""
    prompt_ids: list[int]
    params: object                 # vllm.SamplingParams of the request as first added (n = 1)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    live: object = None            # the running segment's latest CompletionOutput (cumulative)
    segment_version: int = 0       # the weights the running segment samples with


class EngineRequests:
    """The n = 1 requests of one generation loop on a vLLM LLMEngine, resumable across
    weight updates. `add(key, ...)`, then `step()` until `pending` is empty: each step
    returns the (key, Sampled) pairs that finished."""

    def __init__(self, engine, gate: UpdateGate, version: Callable[[], int], lora_request=None):
        self.engine, self.gate, self.version, self.lora_request = engine, gate, version, lora_request
        self.pending: dict[object, Sampled] = {}
        self._ids: dict[str, object] = {}      # request id in the engine -> key

    def add(self, key, prompt_ids: list[int], params) -> None:
        self.pending[key] = Sampled(list(prompt_ids), params)
        self._submit(key)

    def step(self) -> list[tuple[object, Sampled]]:
        self.gate.pause_point(self._abort_in_flight, self._resubmit)
        done = []
        for out in self.engine.step():
            key = self._ids.get(out.request_id)
            if key is None:
                continue
            sampled = self.pending[key]
            sampled.live = out.outputs[0]
            if out.finished:
                del self._ids[out.request_id]
                self._fold(sampled)
                sampled.finish_reason = out.outputs[0].finish_reason
                done.append((key, self.pending.pop(key)))
        return done

    def idle_pause_point(self) -> None:
        """A loop with nothing in the engine (waiting on tools) still lets updates in."""
        self.gate.pause_point(lambda: None, lambda: None)

    def abort(self) -> None:
        """Leave no request of ours in the engine (an error mid-loop)."""
        if self._ids:
            self.engine.abort_request(list(self._ids))
            self._ids.clear()
            while self.engine.has_unfinished_requests():
                self.engine.step()

    # ---------------------------------------------------------------- resume
    def _submit(self, key) -> None:
        sampled = self.pending[key]
        params = sampled.params
        if sampled.token_ids:  # a resumed request: the rest of its budget, its own random stream
            params = params.clone()
            params.max_tokens = sampled.params.max_tokens - len(sampled.token_ids)
            params.min_tokens = max(0, sampled.params.min_tokens - len(sampled.token_ids))
            if params.seed is not None:
                params.seed = derive_seed(params.seed, len(sampled.token_ids))
        sampled.segment_version, sampled.live = self.version(), None
        request_id = f"rlhf-{next(_REQUEST_IDS)}"
        self._ids[request_id] = key
        self.engine.add_request(request_id, {"prompt_token_ids": sampled.prompt_ids + sampled.token_ids}, params,
                                lora_request=self.lora_request)

    def _fold(self, sampled: Sampled) -> None:
        """Move the running segment's tokens into the sample's."""
        comp, sampled.live = sampled.live, None
        if comp is None:
            return
        ids = list(comp.token_ids)
        sampled.token_ids += ids
        sampled.logprobs += [comp.logprobs[k][tok].logprob for k, tok in enumerate(ids)]
        sampled.versions += [sampled.segment_version] * len(ids)

    def _abort_in_flight(self) -> None:
        if not self._ids:
            return
        self.engine.abort_request(list(self._ids))
        while self.engine.has_unfinished_requests():  # the engine drops them (and their KV blocks)
            self.engine.step()
        for key in self._ids.values():
            self._fold(self.pending[key])
        self._ids.clear()

    def _resubmit(self) -> None:
        """Every request not finished has budget left: a request that wrote its last token
        was reported finished by the step that wrote it."""
        for key in list(self.pending):
            self._submit(key)

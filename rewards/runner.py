"""RewardManager: score a batch with several weighted reward functions.

Built-ins (registry names) run in the controller process. User functions (files and
modules) run in a pool of spawned worker processes with a per-call timeout: one
call per sample for per-sample functions, one per batch for batch functions, and
async per-sample functions awaited concurrently in chunks (one chunk per worker).

    with RewardManager([RewardSpec("acc", "gsm8k"),
                        RewardSpec("fmt", "my_rewards.py:has_format", weight=0.1)]) as rm:
        result = rm.score(prompts, responses, labels, columns={"data_source": ...})
    result.scores       # [B] weighted sums; result.components["acc"]: [B] unweighted

Failures (exception, timeout, invalid return) follow `on_error`: "fail" raises
RewardError naming the spec, the sample and the cause; "score" gives the sample
`error_score` for that spec and counts it in RewardResult.errors.
"""
from __future__ import annotations

import logging
import math
import os
import weakref
from dataclasses import dataclass
from typing import Any, Callable

from rewards.loader import CallStyle, detect_style, execute, is_registry_name, load_function, resolve_spec_string
from rewards.pool import Task, WorkerPool
from rewards.types import RewardError, RewardResult, RewardSpec

log = logging.getLogger(__name__)

_PREFIX_CHARS = 40  # how much of a response an error message quotes


@dataclass
class _Entry:
    spec: RewardSpec
    fn: Callable | None  # in-process function; None when it lives in the workers
    style: CallStyle | None
    pool_index: int | None  # index in the worker pool's spec list


class RewardManager:
    """Scores batches with weighted reward specs. Use as a context manager or call close()."""

    def __init__(
        self,
        specs: list[RewardSpec],
        *,
        num_workers: int = 2,  # worker processes for user functions; 0 runs them in-process (no timeout)
        timeout_s: float = 10.0,  # per call: one sample, or one batch for batch functions
        on_error: str = "fail",  # "fail": raise RewardError; "score": use error_score and count it
        error_score: float = 0.0,  # score of a failed sample under on_error="score"
        base_dir: str | os.PathLike | None = None,  # relative reward file paths are tried here, then cwd
    ):
        if not specs:
            raise ValueError("RewardManager needs at least one RewardSpec")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"reward spec names must be unique, got {names}")
        if on_error not in ("fail", "score"):
            raise ValueError(f"on_error must be 'fail' or 'score', got {on_error!r}")
        if timeout_s <= 0 or num_workers < 0:
            raise ValueError(f"need timeout_s > 0 and num_workers >= 0, got {timeout_s}, {num_workers}")
        self.timeout_s = float(timeout_s)
        self.on_error = on_error
        self.error_score = float(error_score)
        self._pool: WorkerPool | None = None
        self._closed = False
        self._entries: list[_Entry] = []
        pool_specs: list[tuple[str, bool | None]] = []
        for spec in specs:
            try:
                if is_registry_name(spec.fn) or num_workers == 0:
                    fn = load_function(spec.fn, base_dir)
                    self._entries.append(_Entry(spec, fn, detect_style(fn, spec.batched), None))
                else:
                    self._entries.append(_Entry(spec, None, None, len(pool_specs)))
                    pool_specs.append((resolve_spec_string(spec.fn, base_dir), spec.batched))
            except Exception as e:
                raise RewardError(f"reward {spec.name!r} (fn={spec.fn!r}): {e}") from e
        if pool_specs:
            pooled = [e for e in self._entries if e.pool_index is not None]
            self._pool = WorkerPool(pool_specs, [e.spec.kwargs for e in pooled], num_workers=num_workers, timeout_s=self.timeout_s)
            self._finalizer = weakref.finalize(self, self._pool.close)
            try:
                described = self._pool.describe()
            except RewardError:
                self.close()
                raise
            for e, (status, value) in zip(pooled, described):
                if status != "ok":
                    self.close()
                    raise RewardError(f"reward {e.spec.name!r} (fn={e.spec.fn!r}) could not be loaded: {value}")
                e.style = value
        for e in self._entries:
            unknown = [k for k in e.spec.kwargs if not e.style.accepts(k)]
            if unknown:
                self.close()
                raise RewardError(
                    f"reward {e.spec.name!r} (fn={e.spec.fn!r}) does not accept keyword argument(s) {unknown}; "
                    f"its parameters: {list(e.style.params)}"
                )

    # ------------------------------------------------------------------ scoring

    def score(self, prompts: list[str], responses: list[str], labels: list, columns: dict[str, list] | None = None) -> RewardResult:
        """Score B samples. `columns` holds other dataset columns (each of length B)."""
        if self._closed:
            raise RewardError("RewardManager.score called after close()")
        n = len(responses)
        columns = dict(columns or {})
        for what, seq in [("prompts", prompts), ("labels", labels), *((f"column {k!r}", v) for k, v in columns.items())]:
            if len(seq) != n:
                raise ValueError(f"{what} has {len(seq)} entries for {n} responses")
        comps = {e.spec.name: [self.error_score] * n for e in self._entries}
        extra: dict[str, list[float]] = {}
        failures: list[str] = []
        failed: set[int] = set()
        stop = self.on_error == "fail"

        def record(e: _Entry, kind: str, indices: list[int], outcome) -> None:
            status, value = outcome
            name = e.spec.name
            if status != "ok":
                failures.append(self._message(e, indices, responses, value))
                failed.update(indices)
            elif kind == "many":
                for i, o in zip(indices, value):
                    record(e, "one", [i], o)
            else:
                scores, ex = value if kind == "batch" else ([value[0]], {k: [v] for k, v in value[1].items()})
                for j, i in enumerate(indices):
                    comps[name][i] = scores[j]
                    for k, vs in ex.items():
                        extra.setdefault(f"{name}/{k}", [math.nan] * n)[i] = vs[j]

        # step 1. in-process functions (built-ins), in the controller
        for e in self._entries:
            if e.pool_index is None and not (stop and failures):
                for kind, indices, payload in self._tasks(e, prompts, responses, labels, columns):
                    record(e, kind, indices, execute(e.fn, e.style, kind, payload, e.spec.kwargs, self.timeout_s))
                    if stop and failures:
                        break

        # step 2. user functions, in the worker pool (all specs share it)
        if self._pool is not None and not (stop and failures):
            owners, tasks = [], []
            for e in self._entries:
                if e.pool_index is not None:
                    for kind, indices, payload in self._tasks(e, prompts, responses, labels, columns):
                        deadline = self.timeout_s * 1.5 + 1.0 if kind == "many" else self.timeout_s
                        tasks.append(Task(e.pool_index, kind, payload, deadline))
                        owners.append((e, kind, indices))
            for (e, kind, indices), outcome in zip(owners, self._pool.run(tasks, stop_on_failure=stop)):
                if outcome is not None:
                    record(e, kind, indices, outcome)

        # step 3. apply the error policy, combine with weights
        if failures:
            more = f"\n({len(failures) - 1} more failure(s) in this batch)" if len(failures) > 1 else ""
            if stop:
                raise RewardError(failures[0] + more)
            log.warning("%d sample(s) scored %s after errors; first: %s", len(failed), self.error_score, failures[0])
        scores = [sum(e.spec.weight * comps[e.spec.name][i] for e in self._entries) for i in range(n)]
        return RewardResult(scores=scores, components=comps, extra=extra, errors=len(failed))

    def _tasks(self, e: _Entry, prompts, responses, labels, columns):
        """(kind, sample indices, payload) units of work for one spec."""
        n = len(responses)
        cols = e.style.wanted_columns(list(columns))
        if e.style.batched:
            yield "batch", list(range(n)), (list(prompts), list(responses), list(labels), {k: list(columns[k]) for k in cols})
            return
        rows = [(prompts[i], responses[i], labels[i], {k: columns[k][i] for k in cols}) for i in range(n)]
        if e.style.is_async:  # awaited concurrently: one chunk per worker
            chunks = self._pool.size if e.pool_index is not None else 1
            size = max(1, -(-n // chunks))
            for s in range(0, n, size):
                yield "many", list(range(s, min(n, s + size))), rows[s : s + size]
            return
        for i, row in enumerate(rows):
            yield "one", [i], row

    def _message(self, e: _Entry, indices: list[int], responses: list[str], cause: str) -> str:
        first = responses[indices[0]] if indices else ""
        prefix = first[:_PREFIX_CHARS] + ("..." if len(first) > _PREFIX_CHARS else "")
        if len(indices) == 1:
            where = f"sample {indices[0]} (response {prefix!r})"
        else:
            where = f"a batch of {len(indices)} samples (indices {indices[0]}..{indices[-1]}, first response {prefix!r})"
        return f"reward {e.spec.name!r} (fn={e.spec.fn!r}) failed on {where}: {cause}"

    # ------------------------------------------------------------------ lifecycle

    @property
    def workers_replaced(self) -> int:
        """Worker processes killed after a timeout or found dead, since start."""
        return self._pool.replaced if self._pool else 0

    def close(self) -> None:
        """Stop the worker processes. Idempotent."""
        self._closed = True
        if self._pool is not None:
            self._finalizer.detach()
            self._pool.close()
            self._pool = None

    def __enter__(self) -> "RewardManager":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

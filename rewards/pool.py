"""Worker processes that run user reward functions with a per-call timeout.

Each worker is a spawned process that loads every user function by its spec string
(never pickled), reports how to call each one, then runs one task at a time. The
controller keeps a deadline per busy worker; a worker past its deadline is killed
and replaced, so a hung function costs one timeout, not the run. A worker that dies
(segfault, os._exit) is replaced the same way.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from multiprocessing.connection import wait
from typing import Any

from rewards.loader import CallStyle, describe_exception, detect_style, execute, load_function
from rewards.types import RewardError


@dataclass
class Task:
    spec: int  # index into the pool's spec list
    kind: str  # "one" | "batch" | "many" (see loader.execute)
    payload: Any
    deadline_s: float  # wall-clock budget of the whole task


def _worker_main(conn, specs: list[tuple[str, bool | None]], kwargs: list[dict], timeout_s: float) -> None:
    loaded, described = [], []
    for fn_str, batched in specs:
        try:
            fn = load_function(fn_str)
            style = detect_style(fn, batched)
            loaded.append((fn, style))
            described.append(("ok", asdict(style)))
        except (Exception, SystemExit) as e:
            loaded.append(None)
            described.append(("error", describe_exception(e)))
    conn.send(("ready", described))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # controller went away
            return
        if msg is None:
            return
        task_id, spec, kind, payload = msg
        fn, style = loaded[spec]
        outcome = execute(fn, style, kind, payload, kwargs[spec], timeout_s)
        try:
            conn.send(("result", task_id, outcome))
        except Exception as e:  # e.g. an unpicklable extra value
            conn.send(("result", task_id, ("error", f"could not send the result back: {describe_exception(e)}")))


@contextlib.contextmanager
def _without_main_module():
    # A spawned child normally re-runs the parent's __main__ (the training script or
    # CLI, with all its imports) before its target. Workers need nothing from it: they
    # load functions by spec string. Hiding __main__'s file and spec while the
    # process starts skips that re-run (and the `if __name__ == "__main__"` trap).
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


class _Worker:
    def __init__(self, ctx, args, start_timeout_s: float):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, *args), daemon=True, name="reward-worker")
        with _without_main_module():
            self.proc.start()
        child.close()
        self.ready = False
        self.start_deadline = time.monotonic() + start_timeout_s
        self.task: tuple[int, float] | None = None  # (task index, deadline)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class WorkerPool:
    """`num_workers` spawned processes that share one list of user functions."""

    def __init__(self, specs: list[tuple[str, bool | None]], kwargs: list[dict], *, num_workers: int, timeout_s: float, start_timeout_s: float = 120.0):
        self._ctx = mp.get_context("spawn")
        self._args = (specs, kwargs, timeout_s)
        self._start_timeout_s = start_timeout_s
        self._workers = [self._spawn() for _ in range(num_workers)]
        self.replaced = 0  # workers killed after a timeout or found dead

    @property
    def size(self) -> int:
        return len(self._workers)

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self._args, self._start_timeout_s)

    def describe(self) -> list[tuple[str, Any]]:
        """Per spec: ("ok", CallStyle) or ("error", why it could not be loaded).

        Blocks until one worker has loaded every function.
        """
        w = self._workers[0]
        msg = self._recv_ready(w)
        return [("ok", CallStyle(**d)) if status == "ok" else (status, d) for status, d in msg[1]]

    def _recv_ready(self, w: _Worker):
        left = w.start_deadline - time.monotonic()
        if not w.conn.poll(max(left, 0)):
            raise RewardError(f"reward worker did not finish loading the reward functions within {self._start_timeout_s:g}s")
        try:
            msg = w.conn.recv()
        except EOFError:
            w.proc.join(timeout=5)
            raise RewardError(f"reward worker died while loading the reward functions (exit code {w.proc.exitcode})") from None
        w.ready = True
        return msg

    def run(self, tasks: list[Task], *, stop_on_failure: bool = False) -> list[tuple[str, Any] | None]:
        """Outcome of each task (loader.execute's, or ("timeout", cause)).

        With stop_on_failure, no task is started after the first failure; tasks
        never started have outcome None.
        """
        try:
            return self._run(tasks, stop_on_failure)
        except BaseException:
            # Interrupted (Ctrl-C, a worker that cannot start): busy workers would hand
            # their stale results to the next run, so replace them.
            for w in list(self._workers):
                if w.task is not None:
                    self._replace(w)
            raise

    def _run(self, tasks: list[Task], stop_on_failure: bool) -> list[tuple[str, Any] | None]:
        results: list[tuple[str, Any] | None] = [None] * len(tasks)
        todo = deque(range(len(tasks)))
        stop = False
        while True:
            for w in self._workers:
                if w.ready and w.task is None and todo and not stop:
                    i = todo.popleft()
                    t = tasks[i]
                    try:
                        w.conn.send((i, t.spec, t.kind, t.payload))
                    except OSError:  # the idle worker died: retry the task on a fresh one
                        todo.appendleft(i)
                        self._replace(w)
                        continue
                    except Exception as e:  # e.g. a column value that cannot be pickled
                        results[i] = ("error", f"could not send the task to a worker: {describe_exception(e)}")
                        stop = stop or stop_on_failure
                        continue
                    w.task = (i, time.monotonic() + t.deadline_s)
            busy = [w for w in self._workers if w.task is not None]
            if not busy and (stop or not todo):
                return results
            waiting = [w for w in self._workers if w.task is not None or not w.ready]
            deadlines = [w.task[1] if w.task else w.start_deadline for w in waiting]
            for conn in wait([w.conn for w in waiting], timeout=max(0.0, min(deadlines) - time.monotonic())):
                w = next(w for w in self._workers if w.conn is conn)
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    w.proc.join(timeout=5)
                    cause = f"reward worker process died (exit code {w.proc.exitcode})"
                    if w.task is None:  # died while loading: do not respawn forever
                        raise RewardError(cause + " while loading the reward functions")
                    results[w.task[0]] = ("error", cause)
                    stop = stop or stop_on_failure
                    self._replace(w)
                    continue
                if msg[0] == "ready":
                    w.ready = True
                else:
                    _, i, outcome = msg
                    results[i] = outcome
                    w.task = None
                    stop = stop or (stop_on_failure and _failed(outcome))
            now = time.monotonic()
            for w in list(self._workers):
                if w.task is not None and now >= w.task[1]:
                    results[w.task[0]] = ("timeout", f"timed out after {tasks[w.task[0]].deadline_s:g}s")
                    stop = stop or stop_on_failure
                    self._replace(w)
                elif not w.ready and now >= w.start_deadline:
                    raise RewardError(f"reward worker did not finish loading the reward functions within {self._start_timeout_s:g}s")

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = self._spawn()
        self.replaced += 1

    def close(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        for w in self._workers:
            w.proc.join(timeout=1)
            w.kill()
        self._workers = []


def _failed(outcome) -> bool:
    if outcome[0] != "ok":
        return True
    if isinstance(outcome[1], list):  # "many": per-sample outcomes
        return any(o[0] != "ok" for o in outcome[1])
    return False

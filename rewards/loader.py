"""Find a reward function from its spec string, detect its calling convention, call
it, and check what it returns.

Spec strings (`RewardSpec.fn`):
    "gsm8k"                      a name in rewards.registry (runs in-process)
    "path/to/file.py:fn"         a file; relative paths resolved against base_dir, then cwd
    "package.module:fn"          an importable module

Conventions, detected from parameter names (first rule that applies wins):
    1. a parameter `queries`         -> OpenRLHF batch: fn(queries, prompts, labels)
                                        queries[i] = prompts[i] + responses[i]
    2. a parameter `solution_strs`   -> verl batch: fn(data_sources, solution_strs,
                                        ground_truths, extra_infos)
    3. a parameter `solution_str`    -> verl per sample: fn(data_source, solution_str,
                                        ground_truth, extra_info=None)
    4. otherwise native: fn(response, label, **kw) per sample, or
       fn(responses, labels, **kw) once per batch when the function is marked
       (`@rewards.batched` or `fn.batched = True`), the spec says `batched=True`,
       or its first parameter is named `responses`.
`async def` functions are awaited in any convention. Dataset columns are passed as
keyword arguments when the signature names them or has **kwargs (verl's data_source
and extra_info come from the columns of those names, None when absent).

Returns: a per-sample function returns a number or a dict with a "score" key; a
batch function returns B numbers (list, tuple, numpy array or torch tensor) or a
dict with a "rewards" (or "scores") key. Other numeric keys of a dict, per-sample
lists or scalars, and one level of nested dicts (OpenRLHF's "extra_logs"), are
reported as extra metrics. None, strings, NaN/inf and wrong lengths are rejected.
"""
from __future__ import annotations

import asyncio
import importlib
import importlib.util
import hashlib
import inspect
import math
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from rewards.registry import get_reward


class BadReturn(Exception):
    """A reward function returned something that is not a valid score."""


@dataclass(frozen=True)
class CallStyle:
    """How to call one reward function (see the module docstring for the rules)."""

    convention: str  # "native" | "verl" | "openrlhf"
    batched: bool  # one call per batch instead of per sample
    is_async: bool  # `async def`: the call returns an awaitable
    params: tuple[str, ...]  # names that can be passed by keyword
    var_kw: bool  # has **kwargs: accepts any column

    def accepts(self, name: str) -> bool:
        return self.var_kw or name in self.params

    def wanted_columns(self, names: Sequence[str]) -> list[str]:
        """The dataset columns this function receives."""
        bound = _BOUND[(self.convention, self.batched)]
        # verl functions always get data_source and extra_info (None when absent).
        verl = ("data_source", "extra_info") if self.convention == "verl" else ()
        return [n for n in names if n in verl or (n not in bound and self.accepts(n))]


# Argument names the convention fills itself; a column of the same name is not passed.
_BOUND = {
    ("native", False): {"response", "label", "prompt"},
    ("native", True): {"responses", "labels", "prompts"},
    ("verl", False): {"data_source", "solution_str", "ground_truth", "extra_info"},
    ("verl", True): {"data_sources", "solution_strs", "ground_truths", "extra_infos", "data_source", "extra_info"},
    ("openrlhf", True): {"queries", "prompts", "labels"},
}


# ---------------------------------------------------------------------------- loading


def is_registry_name(fn: str) -> bool:
    """True for "gsm8k", False for "file.py:fn" and "pkg.mod:fn"."""
    return ":" not in fn


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def resolve_spec_string(fn: str, base_dir: str | os.PathLike | None = None) -> str:
    """`fn` with a file path made absolute; FileNotFoundError if the file is missing.

    Done in the controller so workers, whatever their cwd, load the same file.
    """
    target, _, attr = fn.rpartition(":")
    if not target or not attr:
        raise ValueError(f"expected 'path/to/file.py:function' or 'package.module:function', got {fn!r}")
    if not _is_file_target(target):
        return fn
    p = Path(target).expanduser()
    candidates = [p] if p.is_absolute() else [Path(d) / p for d in (base_dir, os.getcwd()) if d is not None]
    for c in candidates:
        if c.is_file():
            return f"{c.resolve()}:{attr}"
    raise FileNotFoundError(f"reward file {target!r} not found (looked for: {', '.join(str(c) for c in candidates)})")


def _import_file(path: str):
    # A unique module name per path: two files both called rewards.py must not collide.
    name = "_reward_file_" + Path(path).stem + "_" + hashlib.sha1(path.encode()).hexdigest()[:8]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    folder = str(Path(path).parent)
    if folder not in sys.path:
        sys.path.append(folder)  # let the file import its siblings
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_function(fn: str, base_dir: str | os.PathLike | None = None) -> Callable:
    """The callable named by a spec string (see the module docstring)."""
    if is_registry_name(fn):
        return get_reward(fn)
    fn = resolve_spec_string(fn, base_dir)
    target, _, attr = fn.rpartition(":")
    module = _import_file(target) if _is_file_target(target) else importlib.import_module(target)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise AttributeError(f"{target!r} has no function {attr!r} (callables there: {', '.join(names) or 'none'})") from None
    if not callable(obj):
        raise TypeError(f"{target}:{attr} is a {type(obj).__name__}, not a function")
    return obj


def detect_style(fn: Callable, batched: bool | None = None) -> CallStyle:
    """The calling convention of `fn` from its parameter names (module docstring)."""
    sig = inspect.signature(fn)
    ps = list(sig.parameters.values())
    names = tuple(p.name for p in ps if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    var_kw = any(p.kind is p.VAR_KEYWORD for p in ps)
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))
    if "queries" in names:
        return CallStyle("openrlhf", True, is_async, names, var_kw)
    if "solution_strs" in names:
        return CallStyle("verl", True, is_async, names, var_kw)
    if "solution_str" in names:
        return CallStyle("verl", False, is_async, names, var_kw)
    positional = [p for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in ps):
        raise TypeError(
            f"cannot tell how to call {getattr(fn, '__name__', fn)}{sig}: expected fn(response, label, **kwargs), "
            "fn(responses, labels, **kwargs) marked batched, verl's compute_score(data_source, solution_str, "
            "ground_truth, extra_info) or OpenRLHF's reward_func(queries, prompts, labels)"
        )
    if batched is None:
        batched = bool(getattr(fn, "batched", False)) or (positional[0].name == "responses")
    return CallStyle("native", bool(batched), is_async, names, var_kw)


# ---------------------------------------------------------------------------- calling


def _await(result):
    if inspect.isawaitable(result):

        async def wait():
            return await result

        return asyncio.run(wait())
    return result


def _extra_kwargs(style: CallStyle, columns: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    bound = _BOUND[(style.convention, style.batched)]
    out = {k: v for k, v in columns.items() if k not in bound and style.accepts(k)}
    out.update(kwargs)
    return out


def sample_call(fn: Callable, style: CallStyle, prompt: str, response: str, label, row: dict[str, Any], kwargs: dict[str, Any]):
    """Call a per-sample function on one sample; returns what it returned (maybe awaitable)."""
    extra = _extra_kwargs(style, row, kwargs)
    if style.convention == "verl":
        verl = dict(data_source=row.get("data_source"), solution_str=response, ground_truth=label)
        if style.accepts("extra_info"):
            verl["extra_info"] = row.get("extra_info")
        return fn(**verl, **extra)
    if style.accepts("prompt"):
        extra.setdefault("prompt", prompt)
    return fn(response, label, **extra)


def batch_call(fn: Callable, style: CallStyle, prompts: list[str], responses: list[str], labels: list, columns: dict[str, list], kwargs: dict[str, Any]):
    """Call a batch function once; returns what it returned (maybe awaitable)."""
    extra = _extra_kwargs(style, columns, kwargs)
    n = len(responses)
    if style.convention == "openrlhf":
        queries = [p + r for p, r in zip(prompts, responses)]
        return fn(queries=queries, prompts=prompts, labels=labels, **extra)
    if style.convention == "verl":
        verl = dict(
            data_sources=columns.get("data_source", [None] * n),
            solution_strs=responses,
            ground_truths=labels,
        )
        if style.accepts("extra_infos"):
            verl["extra_infos"] = columns.get("extra_info", [None] * n)
        return fn(**verl, **extra)
    if style.accepts("prompts"):
        extra.setdefault("prompts", prompts)
    return fn(responses, labels, **extra)


# ---------------------------------------------------------------------- return checks


def _show(x: Any) -> str:
    r = repr(x)
    return (r if len(r) <= 80 else r[:77] + "...") + f" ({type(x).__name__})"


def _number(x: Any) -> float | None:
    """float(x) for real numbers (incl. numpy/torch scalars), else None."""
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)):
        return float(x)
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy / torch 0-d
        try:
            v = x.tolist()
        except Exception:
            return None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, bool):
            return float(v)
    return None


def _finite(x: Any, what: str) -> float:
    v = _number(x)
    if v is None:
        raise BadReturn(f"{what} {_show(x)}")
    if not math.isfinite(v):
        raise BadReturn(f"{what} {v} (not finite)")
    return v


def check_sample_result(result: Any) -> tuple[float, dict[str, float]]:
    """(score, extra metrics) from a per-sample return value; BadReturn if invalid."""
    if isinstance(result, dict):
        if "score" not in result:
            raise BadReturn(f"returned a dict without a 'score' key (keys: {sorted(map(str, result))})")
        score = _finite(result["score"], "returned 'score' =")
        extra = {}
        for k, v in result.items():
            if k != "score" and (n := _number(v)) is not None:
                extra[str(k)] = n
        return score, extra
    if _number(result) is None:
        raise BadReturn(f"returned {_show(result)}; expected a number or a dict with a 'score' key")
    return _finite(result, "returned"), {}


def _as_list(x: Any) -> list | None:
    if isinstance(x, (list, tuple)):
        return list(x)
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        try:
            v = x.tolist()
        except Exception:
            return None
        return v if isinstance(v, list) else None
    return None


def check_batch_result(result: Any, n: int) -> tuple[list[float], dict[str, list[float]]]:
    """(B scores, extra metrics of len B) from a batch return value; BadReturn if invalid."""
    extra: dict[str, list[float]] = {}
    if isinstance(result, dict):
        key = next((k for k in ("rewards", "scores") if k in result), None)
        if key is None:
            raise BadReturn(f"returned a dict without a 'rewards' or 'scores' key (keys: {sorted(map(str, result))})")
        _collect_extra(result, n, "", extra, skip=key)
        result = result[key]
    values = _as_list(result)
    if values is None:
        raise BadReturn(f"returned {_show(result)}; expected {n} numbers (list or tensor) or a dict with 'rewards'")
    if len(values) != n:
        raise BadReturn(f"returned {len(values)} scores for a batch of {n} samples")
    return [_finite(v, f"returned at position {i}:") for i, v in enumerate(values)], extra


def _collect_extra(d: dict, n: int, prefix: str, out: dict[str, list[float]], skip: str | None = None, depth: int = 0) -> None:
    for k, v in d.items():
        if k == skip:
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict) and depth == 0:
            _collect_extra(v, n, "", out, depth=1)  # e.g. OpenRLHF "extra_logs": {"acc": ...}
        elif (s := _number(v)) is not None:
            out[key] = [s] * n
        elif (lst := _as_list(v)) is not None and len(lst) == n and all(_number(x) is not None for x in lst):
            out[key] = [_number(x) for x in lst]


# ------------------------------------------------------------------ one unit of work


def describe_exception(exc: BaseException) -> str:
    """"Type: message (at file:line in fn)" for the innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    msg = str(exc)
    return f"{type(exc).__name__}{': ' + msg if msg else ''}{where}"


def execute(fn: Callable, style: CallStyle, kind: str, payload: tuple, kwargs: dict, timeout_s: float | None = None):
    """Run one task and return its outcome, never raising for user errors.

    kind "one":   payload (prompt, response, label, row)     -> ("ok", (score, extra))
    kind "batch": payload (prompts, responses, labels, cols) -> ("ok", (scores, extra))
    kind "many":  payload list of "one" payloads, awaited concurrently (async per-sample
                  functions), each under timeout_s               -> ("ok", [outcome, ...])
    Failures are ("error", cause) or ("bad", what it returned).
    """
    try:
        if kind == "one":
            return "ok", check_sample_result(_await(sample_call(fn, style, *payload, kwargs)))
        if kind == "batch":
            return "ok", check_batch_result(_await(batch_call(fn, style, *payload, kwargs)), len(payload[1]))
        if kind == "many":
            return "ok", asyncio.run(_many(fn, style, payload, kwargs, timeout_s))
        raise ValueError(f"unknown task kind {kind!r}")
    except BadReturn as e:
        return "bad", str(e)
    except (Exception, SystemExit) as e:
        return "error", describe_exception(e)


async def _many(fn, style, payloads, kwargs, timeout_s):
    async def one(p):
        try:
            coro = sample_call(fn, style, *p, kwargs)
            r = await asyncio.wait_for(coro, timeout_s) if inspect.isawaitable(coro) else coro
            return "ok", check_sample_result(r)
        except asyncio.TimeoutError:
            return "timeout", f"timed out after {timeout_s:g}s"
        except BadReturn as e:
            return "bad", str(e)
        except (Exception, SystemExit) as e:
            return "error", describe_exception(e)

    return list(await asyncio.gather(*(one(p) for p in payloads)))

"""HTTP client of a reward server (rewards.server, scripts/serve_reward_model.py).

POST {url}/score with {"prompts": [...], "responses": [...], "labels": [...]} and
read {"scores": [...]}, batch_size samples per request, over one pooled httpx
connection. Connection errors, timeouts and 5xx answers are retried by tenacity with
exponential backoff; 4xx answers and malformed replies fail at once.

As a reward spec: RewardSpec("rm", "remote", kwargs={"url": "http://127.0.0.1:8000"}).
"""
from __future__ import annotations

import functools
import json
import math
import urllib.parse

import httpx
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from rewards.registry import register_reward
from rewards.types import RewardError


class _ServerError(Exception):
    """A 5xx answer: the server may recover, so the request is retried."""


class RemoteRewardClient:
    """Scores (prompt, response, label) triples on a reward server."""

    def __init__(self, url: str, batch_size: int = 32, timeout_s: float = 10.0, retries: int = 3, backoff_s: float = 0.5):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"reward server url must look like http://host:port, got {url!r}")
        base = url.rstrip("/")
        self.url = base if parts.path.rstrip("/").endswith("/score") else base + "/score"  # POST target
        self.batch_size = batch_size  # samples per request
        self.timeout_s = timeout_s  # per request
        self.retries = retries  # extra attempts after the first, per request
        self.backoff_s = backoff_s  # sleep before retry k is backoff_s * 2**(k-1)
        self._http = httpx.Client(timeout=timeout_s)

    def score(self, prompts: list[str], responses: list[str], labels: list) -> list[float]:
        """One score per response, in order."""
        if not (len(prompts) == len(responses) == len(labels)):
            raise ValueError(f"got {len(prompts)} prompts, {len(responses)} responses, {len(labels)} labels")
        out: list[float] = []
        for s in range(0, len(responses), self.batch_size):
            e = s + self.batch_size
            body = {"prompts": list(prompts[s:e]), "responses": list(responses[s:e]), "labels": list(labels[s:e])}
            reply = self._post(body)
            scores = reply.get("scores") if isinstance(reply, dict) else reply
            n = len(body["responses"])
            if not isinstance(scores, list) or len(scores) != n:
                raise RewardError(f"reward server at {self.url} returned {_short(scores)} instead of {n} scores")
            for x in scores:
                if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                    raise RewardError(f"reward server at {self.url} returned a non-numeric score {x!r}")
            out.extend(float(x) for x in scores)
        return out

    def _post(self, body: dict) -> dict:
        retrying = Retrying(
            retry=retry_if_exception_type((httpx.TransportError, _ServerError)),
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff_s),  # backoff_s * 2**(k-1) before retry k
        )
        try:
            resp = retrying(self._send, json.dumps(body, default=str).encode())
        except RetryError as e:
            cause = e.last_attempt.exception()
            raise RewardError(f"reward server at {self.url} unreachable after {self.retries + 1} attempt(s): "
                              f"{_describe(cause)}") from None
        try:
            return resp.json()
        except ValueError:
            raise RewardError(f"reward server at {self.url} answered with invalid JSON: {resp.content[:200]!r}") from None

    def _send(self, data: bytes) -> httpx.Response:
        resp = self._http.post(self.url, content=data, headers={"Content-Type": "application/json"})
        detail = resp.text[:300]
        if resp.status_code >= 500:
            raise _ServerError(f"HTTP {resp.status_code} {detail}")
        if resp.status_code >= 400:  # our request is wrong: retrying will not help
            raise RewardError(f"reward server at {self.url} rejected the request: HTTP {resp.status_code} {detail}")
        return resp


def _describe(error: BaseException | None) -> str:
    """The root cause of a failed attempt, e.g. "ConnectionRefusedError: [Errno 111] ..."."""
    if isinstance(error, _ServerError):
        return str(error)
    while error is not None and (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {error}"


def _short(x) -> str:
    r = repr(x)
    return r if len(r) < 100 else r[:97] + "..."


@functools.lru_cache(maxsize=16)
def _client(url: str, batch_size: int, timeout_s: float, retries: int, backoff_s: float) -> RemoteRewardClient:
    return RemoteRewardClient(url, batch_size, timeout_s, retries, backoff_s)


@register_reward("remote", batch=True)
def remote(responses: list[str], labels: list, *, prompts: list[str], url: str, batch_size: int = 32, timeout_s: float = 10.0, retries: int = 3, backoff_s: float = 0.5) -> list[float]:
    """Scores from the reward server at `url` (a batch function: one call per batch)."""
    return _client(url, batch_size, timeout_s, retries, backoff_s).score(prompts, responses, labels)

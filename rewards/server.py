"""A small HTTP reward server around any scoring callable (standard library only).

    POST /score  {"prompts": [...], "responses": [...], "labels": [...]}  ->  {"scores": [...]}
    GET  /health                                                          ->  {"status": "ok"}

`score_fn(prompts, responses, labels) -> list[float]`. "labels" may be omitted (None
each). Binds 127.0.0.1 unless told otherwise: the server has no authentication.
Calls to score_fn are serialised by a lock (a model forward pass is not re-entrant
in general; it parallelises internally instead).

    server = make_server(my_score_fn, port=8000)
    server.serve_forever()
"""
from __future__ import annotations

import json
import logging
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

log = logging.getLogger(__name__)

ScoreFn = Callable[[list, list, list], list]


class RewardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], score_fn: ScoreFn):
        self.score_fn = score_fn
        self.lock = threading.Lock()
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(score_fn: ScoreFn, host: str = "127.0.0.1", port: int = 8000) -> RewardServer:
    """A bound (not yet serving) server; port=0 picks a free port (see .url)."""
    return RewardServer((host, port), score_fn)


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        if self.path.rstrip("/") == "/health":
            self._reply(200, {"status": "ok"})
        else:
            self._reply(404, {"error": f"unknown path {self.path}; use POST /score or GET /health"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/score":
            self._reply(404, {"error": f"unknown path {self.path}; use POST /score"})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            prompts, responses = body["prompts"], body["responses"]
            labels = body.get("labels") or [None] * len(responses)
            if not all(isinstance(x, list) for x in (prompts, responses, labels)) or not len(prompts) == len(responses) == len(labels):
                raise ValueError("prompts, responses and labels must be lists of one length")
        except (ValueError, KeyError, TypeError) as e:
            self._reply(400, {"error": f"bad request: {type(e).__name__}: {e}"})
            return
        try:
            with self.server.lock:
                scores = [float(s) for s in self.server.score_fn(prompts, responses, labels)]
            if len(scores) != len(responses) or not all(math.isfinite(s) for s in scores):
                raise ValueError(f"scorer returned {len(scores)} scores (finite: {all(map(math.isfinite, scores))}) for {len(responses)} samples")
        except Exception as e:
            log.exception("scoring failed")
            self._reply(500, {"error": f"scoring failed: {type(e).__name__}: {e}"})
            return
        self._reply(200, {"scores": scores})

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

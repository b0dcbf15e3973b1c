"""A small HTTP reward server around any scoring callable (FastAPI app, uvicorn server).

    POST /score  {"prompts": [...], "responses": [...], "labels": [...]}  ->  {"scores": [...]}
    GET  /health                                                          ->  {"status": "ok"}

`score_fn(prompts, responses, labels) -> list[float]`. "labels" may be omitted (None
each). Errors answer {"error": "..."}: 400 for a malformed request, 404 for an unknown
path, 500 when the scorer fails. Binds 127.0.0.1 unless told otherwise: the server has
no authentication. Calls to score_fn are serialised by a lock (a model forward pass is
not re-entrant in general; it parallelises internally instead).

    server = make_server(my_score_fn, port=8000)
    server.serve_forever()          # or server.start() to serve from a background thread
"""
from __future__ import annotations

import logging
import math
import socket
import threading
from typing import Any, Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, model_validator
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

ScoreFn = Callable[[list, list, list], list]


class ScoreRequest(BaseModel):
    prompts: list[str]
    responses: list[str]
    labels: list[Any] | None = None  # any JSON values; None: one None per response

    @model_validator(mode="after")
    def _one_length(self) -> "ScoreRequest":
        if self.labels is None:
            self.labels = [None] * len(self.responses)
        if not len(self.prompts) == len(self.responses) == len(self.labels):
            raise ValueError("prompts, responses and labels must be lists of one length")
        return self


def make_app(score_fn: ScoreFn) -> FastAPI:
    """The FastAPI app: /score and /health, JSON errors as {"error": ...}."""
    app = FastAPI(title="reward server", openapi_url=None, docs_url=None, redoc_url=None)
    lock = threading.Lock()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/score")
    def score(req: ScoreRequest) -> JSONResponse:  # sync: FastAPI runs it in its thread pool
        try:
            with lock:
                scores = [float(s) for s in score_fn(req.prompts, req.responses, req.labels)]
            if len(scores) != len(req.responses) or not all(math.isfinite(s) for s in scores):
                raise ValueError(f"scorer returned {len(scores)} scores (finite: {all(map(math.isfinite, scores))}) "
                                 f"for {len(req.responses)} samples")
        except Exception as e:
            log.exception("scoring failed")
            return JSONResponse({"error": f"scoring failed: {type(e).__name__}: {e}"}, status_code=500)
        return JSONResponse({"scores": scores})

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        why = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": f"bad request: {why}"}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}; use POST /score or GET /health"},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    return app


class RewardServer:
    """uvicorn serving make_app(score_fn) on a socket bound at construction, so that
    port=0 yields a free port known (see .url) before serving starts."""

    def __init__(self, score_fn: ScoreFn, host: str, port: int):
        self.socket = socket.create_server((host, port))  # bound and listening
        config = uvicorn.Config(make_app(score_fn), log_config=None, access_log=False, lifespan="off")
        self._uvicorn = uvicorn.Server(config)
        self._stopped = threading.Event()
        self._stopped.set()
        self._thread: threading.Thread | None = None

    @property
    def server_address(self) -> tuple[str, int]:
        return self.socket.getsockname()[:2]

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve until shutdown() (or Ctrl-C in the main thread)."""
        self._stopped.clear()
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def start(self, timeout_s: float = 30.0) -> "RewardServer":
        """Serve from a daemon thread; returns once the server accepts requests."""
        self._stopped.clear()  # before the thread runs: a shutdown() right after start() waits for it
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="reward-server")
        self._thread.start()
        for _ in range(int(timeout_s / 0.01)):
            if self._uvicorn.started or not self._thread.is_alive():
                break
            self._thread.join(0.01)
        if not self._uvicorn.started:
            raise RuntimeError(f"reward server at {self.url} did not start within {timeout_s:g}s")
        return self

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop serving and wait for serve_forever to return."""
        self._uvicorn.should_exit = True
        self._stopped.wait(timeout_s)

    def server_close(self) -> None:
        self.socket.close()

    def __enter__(self) -> "RewardServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


def make_server(score_fn: ScoreFn, host: str = "127.0.0.1", port: int = 8000) -> RewardServer:
    """A bound (not yet serving) server; port=0 picks a free port (see .url)."""
    return RewardServer(score_fn, host, port)

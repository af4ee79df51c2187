"""The ASGI app: FastAPI routes over lean.runtime models, each behind its own batcher and worker thread.

    from lean.serve import ServeConfig, build_app
    app = build_app(ServeConfig(models=["runs/student-int8"]))    # run with any ASGI server

Models load and warm up on their worker threads after the server starts, so /health answers at once
and /ready turns 200 when every model has run a warm-up batch. Nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from lean.errors import first_line
from lean.serve.config import ModelSpec, ServeConfig
from lean.serve.errors import ServeError
from lean.serve.metrics import ServeMetrics

log = logging.getLogger("lean.serve")


@dataclass
class ServedModel:
    """One model's state: loading, ready or failed; its worker thread, and its batcher once ready."""

    spec: ModelSpec
    executor: ThreadPoolExecutor
    model: Any = None
    batcher: Any = None
    state: str = "loading"
    error: str | None = None
    generations_waiting: int = 0

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.spec.name, "path": str(self.spec.path), "state": self.state}
        if self.model is not None:
            out.update(kind=self.model.kind, max_length=self.model.max_length, labels=self.model.label_names,
                       provider=self.model.provider, threads=self.model.threads)
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class ServerState:
    config: ServeConfig
    metrics: ServeMetrics
    models: dict[str, ServedModel] = field(default_factory=dict)
    draining: bool = False  # set on SIGTERM: /ready says 503 so load balancers stop sending

    def ready(self) -> bool:
        return not self.draining and all(m.state == "ready" for m in self.models.values())

    def get(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise ServeError(404, "model_not_found", f"no model named '{name}': GET /v1/models lists the served ones")
        if served.state != "ready":
            detail = f" ({served.error})" if served.error else ""
            raise ServeError(503, "model_not_ready", f"model '{name}' is {served.state}{detail}",
                             headers={"Retry-After": str(self.config.retry_after_s)})
        return served


def default_loader(spec: ModelSpec, config: ServeConfig):
    from lean.runtime import load

    spinning = {"session.intra_op.allow_spinning": "1" if config.ort_spinning else "0"}
    return load(spec.path, provider=config.provider, threads=config.threads, session_config=spinning)


def build_app(config: ServeConfig, loader: Callable[[ModelSpec, ServeConfig], Any] = default_loader):
    """The FastAPI app serving `config.models`; `loader` turns a spec into a lean.runtime model."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    from lean.serve import routes
    from lean.serve.middleware import BodyLimit, RequestMetrics

    state = ServerState(config=config, metrics=ServeMetrics())

    @asynccontextmanager
    async def lifespan(app):
        for spec in config.models:
            # one worker thread per model: onnxruntime parallelises inside each call with its own threads
            executor = ThreadPoolExecutor(1, thread_name_prefix=f"lean-serve-{spec.name}")
            state.models[spec.name] = ServedModel(spec=spec, executor=executor)
        loading = [asyncio.create_task(_load(state, served, loader)) for served in state.models.values()]
        try:
            yield
        finally:
            for task in loading:
                task.cancel()
            for served in state.models.values():
                if served.batcher is not None:
                    await served.batcher.stop()
                served.executor.shutdown(wait=True)

    app = FastAPI(title="lean serve", version="1", lifespan=lifespan,
                  description="Exported lean models over HTTP: dynamic batching, Prometheus metrics.")
    app.state.lean = state
    routes.add_routes(app, state)
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=state.metrics, model_names={m.name for m in config.models})
    return app


async def _load(state: ServerState, served: ServedModel, loader) -> None:
    from lean.serve.batcher import Batcher

    loop = asyncio.get_running_loop()
    config = state.config
    try:
        served.model = await loop.run_in_executor(served.executor, loader, served.spec, config)
        await loop.run_in_executor(served.executor, _warm_up, served.model, config)
    except Exception as e:  # a broken directory fails this model's readiness, not the server
        served.state, served.error = "failed", first_line(e)
        log.error("model '%s' failed to load: %s", served.spec.name, served.error)
        return
    if served.model.kind == "classification":
        limit = served.model.max_length  # None: a model that reads whole texts (lean.runtime.tfidf)
        max_length = min(config.max_length or limit, limit) if limit else (config.max_length or 0)
        served.batcher = Batcher(served.spec.name, served.model, served.executor, state.metrics,
                                 config.max_batch_size, config.max_wait_ms, config.max_queue, max_length,
                                 config.length_buckets, config.retry_after_s)
        served.batcher.start()
    served.state = "ready"
    log.info("model '%s' ready: %s", served.spec.name, served.model)


def _warm_up(model, config: ServeConfig) -> None:
    """One full-length batch, so onnxruntime has planned its memory before the first real request."""
    if model.kind == "classification":
        model.predict(["warm up " * (model.max_length or 128)] * config.max_batch_size,
                      batch_size=config.max_batch_size)
    else:
        model.generate(["warm up"], max_new_tokens=2)


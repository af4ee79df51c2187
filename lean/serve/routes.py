"""The HTTP routes: predict, generate (server-sent events), models, health, readiness, metrics."""

from __future__ import annotations

import asyncio
import http
import json
import threading
from typing import Annotated, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from lean.errors import first_line
from lean.serve.errors import ServeError, limit_error


def _encodable(text: str) -> str:
    """JSON may spell a lone UTF-16 surrogate ("\\ud800"); no tokenizer can take it, so it is the client's error."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode: a lone surrogate {text[e.start]!a} at character {e.start}; "
                         "send whole characters (a surrogate pair, or the character itself)") from None
    return text


Text = Annotated[StrictStr, AfterValidator(_encodable)]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[Text] = Field(description="Texts to classify; each answer is what `lean predict` prints for it.")


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Text
    max_new_tokens: StrictInt = Field(32, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=100.0, description="0 is greedy, the tokens `lean predict` gives.")
    top_k: Optional[StrictInt] = Field(None, ge=1)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    seed: Optional[StrictInt] = None
    stream: StrictBool = Field(True, description="Server-sent events, one per piece of text, then a 'done' event.")


def add_error_handlers(app) -> None:
    """Every refusal as lean's JSON `{"error": {...}}`, FastAPI's own included."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, error: ServeError):
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in error.errors()]
        return JSONResponse({"error": {"type": "invalid_request", "message": "; ".join(problems)[:1000]}},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        """FastAPI's own refusals (a body it cannot parse, an unknown path, a wrong method) in lean's JSON shape."""
        unparsable = _unparsable_body(error)
        if unparsable:
            return JSONResponse(ServeError(422, "invalid_request", unparsable).body(), status_code=422)
        kind = http.HTTPStatus(error.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        return JSONResponse(ServeError(error.status_code, kind, str(error.detail)).body(),
                            status_code=error.status_code, headers=error.headers)


def add_routes(app, state) -> None:
    from fastapi.responses import JSONResponse, Response

    add_error_handlers(app)

    @app.get("/health", summary="Alive: the process answers")
    async def health():
        return {"status": "alive"}

    @app.get("/ready", summary="Every model loaded and warmed up (503 while loading or draining)")
    async def ready():
        body = {"status": "ready" if state.ready() else ("draining" if state.draining else "not ready"),
                "models": {name: m.state for name, m in state.models.items()}}
        return JSONResponse(body, status_code=200 if state.ready() else 503)

    @app.get("/metrics", summary="Prometheus text exposition")
    async def metrics():
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models", summary="The served models and their state")
    async def models():
        return {"models": [m.describe() for m in state.models.values()]}

    @app.post("/v1/models/{name}/predict", summary="Labels and scores, as `lean predict` prints them")
    async def predict(name: str, request: PredictRequest):
        served = state.get(name)
        if served.batcher is None:
            raise ServeError(422, "wrong_kind", f"model '{name}' is a causal LM: POST /v1/models/{name}/generate")
        check_texts(request.texts, state.config)
        try:
            predictions = await served.batcher.predict(request.texts)
        except ServeError:
            raise
        except Exception as e:  # this request alone failed in the model; the batch's others were answered
            raise ServeError(500, "inference_failed", f"model '{name}' failed on this request: {first_line(e)}") from None
        return {"model": name, "predictions": predictions}

    @app.post("/v1/models/{name}/generate", summary="Continue a prompt (server-sent events when stream is true)")
    async def generate(name: str, request: GenerateRequest):
        served = state.get(name)
        if served.model.kind != "lm":
            raise ServeError(422, "wrong_kind", f"model '{name}' is a classifier: POST /v1/models/{name}/predict")
        _check_generate(request, served.model, state.config)
        if served.generations_waiting >= state.config.max_queue:
            from lean.serve.errors import QueueFull

            state.metrics.rejected.labels(name).inc()
            raise QueueFull(name, state.config.max_queue, state.config.retry_after_s)
        events = _generation_events(state, served, request)
        if request.stream:
            from fastapi.responses import StreamingResponse

            return StreamingResponse(_sse(events), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        async for kind, payload in events:
            if kind == "error":
                raise ServeError(500, "generation_failed", payload["message"])
            if kind == "done":
                return payload


def _unparsable_body(error) -> str | None:
    """FastAPI answers 400 'There was an error parsing the body' for any failure but bad JSON syntax; its cause says which."""
    cause = error.__cause__
    if error.status_code != 400 or cause is None:
        return None
    if isinstance(cause, UnicodeDecodeError):
        return (f"the body is not UTF-8 JSON ({cause.reason} at byte {cause.start}): send JSON encoded as UTF-8, "
                "uncompressed")
    if isinstance(cause, RecursionError):
        return "the body's JSON is nested too deeply to parse: send the documented {\"texts\": [...]} shape"
    return f"the body cannot be parsed as JSON: {first_line(cause)}"


def check_texts(texts: list[str], config) -> None:
    if not texts:
        raise ServeError(422, "invalid_request", "'texts' is empty: send at least one text")
    if len(texts) > config.max_texts:
        raise limit_error("max_texts", config.max_texts, len(texts), "number of texts in the request")
    longest = max(len(t) for t in texts)
    if longest > config.max_text_chars:
        raise limit_error("max_text_chars", config.max_text_chars, longest, "characters in one text")


def _check_generate(request: GenerateRequest, model, config) -> None:
    if len(request.prompt) > config.max_text_chars:
        raise limit_error("max_text_chars", config.max_text_chars, len(request.prompt), "characters in the prompt")
    if request.max_new_tokens > config.max_new_tokens:
        raise limit_error("max_new_tokens", config.max_new_tokens, request.max_new_tokens, "max_new_tokens")
    if request.max_new_tokens >= model.context_length:
        raise ServeError(422, "invalid_request", f"max_new_tokens {request.max_new_tokens} leaves no room for a "
                         f"prompt in the model's context of {model.context_length} tokens: lower it")


async def _generation_events(state, served, request: GenerateRequest):
    """("token", {...}) per piece of text, then ("done", {...}) or ("error", {...}); runs on the model's thread."""
    from lean.serve.generate import Sampling, TextStream, stream_ids

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()
    sampling = Sampling(request.temperature, request.top_k, request.top_p, request.seed)
    counter = state.metrics.generated_tokens.labels(served.spec.name)

    def work():
        loop.call_soon_threadsafe(_started, served)  # now running, no longer waiting
        text = TextStream(served.model.tokenizer)
        count = 0
        try:
            for token_id in stream_ids(served.model, request.prompt, request.max_new_tokens, sampling,
                                       state.config.max_length, stop):
                count += 1
                counter.inc()
                loop.call_soon_threadsafe(queue.put_nowait, ("token", {"id": token_id, "text": text.push(token_id)}))
            reason = "length" if count == request.max_new_tokens else "stop"
            whole = served.model.tokenizer.decode(text.ids, skip_special_tokens=True)  # as `lean predict` prints it
            done = {"model": served.spec.name, "generated_text": whole,
                    "finish_reason": reason, "tokens": count}
            loop.call_soon_threadsafe(queue.put_nowait, ("done", done))
        except Exception as e:  # this request fails alone; the model's thread keeps serving
            loop.call_soon_threadsafe(queue.put_nowait, ("error", {"message": first_line(e)}))

    served.generations_waiting += 1
    job = loop.run_in_executor(served.executor, work)
    try:
        while True:
            kind, payload = await queue.get()
            yield kind, payload
            if kind != "token":
                break
    finally:
        stop.set()  # the client went away or the stream ended: stop generating
        await asyncio.shield(job)


def _started(served) -> None:
    served.generations_waiting -= 1


async def _sse(events):
    async for kind, payload in events:
        data = json.dumps(payload)
        yield f"data: {data}\n\n" if kind == "token" else f"event: {kind}\ndata: {data}\n\n"

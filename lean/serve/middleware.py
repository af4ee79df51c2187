"""Pure ASGI middleware: a body-size limit (413 before any parsing) and per-request metrics.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, so a streamed response (server-sent events)
passes through untouched and the cost per request stays a few function calls.
"""

from __future__ import annotations

import json
import time

from lean.serve.errors import ServeError


async def send_error(send, error: ServeError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _too_large(limit: int, got: int | None) -> ServeError:
    size = f"{got} bytes" if got is not None else "more"
    return ServeError(413, "body_too_large", f"request body of {size} is over the server's limit of {limit} bytes "
                      "(--max-body-bytes): send fewer or shorter texts per request",
                      limit={"name": "max_body_bytes", "value": limit})


class BodyLimit:
    """Reads a request body whole, up to `limit` bytes, then hands it on; a larger one gets 413.

    A declared Content-Length over the limit is refused before a byte is read; a chunked body is
    counted as it arrives, so neither can make the server hold more than `limit` bytes of it.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding not in (b"", b"identity"):  # nothing here inflates a body: it would be read as broken JSON
            return await send_error(send, ServeError(
                422, "invalid_request", f"Content-Encoding {encoding.decode('latin-1')!r} is not supported: "
                "send the body uncompressed", headers={"Accept-Encoding": "identity"}))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await send_error(send, _too_large(self.limit, int(declared)))
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await send_error(send, _too_large(self.limit, None))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards: wait for the disconnect, as the server would say it

        await self.app(scope, replay, send)


class RequestMetrics:
    """Counts every answer by route, model and status, and times it to its last byte."""

    def __init__(self, app, metrics, model_names):
        self.app, self.metrics, self.model_names = app, metrics, model_names

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [499]  # 499 (nginx's "client closed request"): no answer was sent

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            if status[0] == 499:
                status[0] = 500  # the app failed before answering: the server answers 500
            raise
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            name = (scope.get("path_params") or {}).get("name")
            model = name if name in self.model_names else ""  # unknown names would make unbounded label sets
            self.metrics.requests.labels(route, model, str(status[0])).inc()
            self.metrics.latency.labels(route, model).observe(time.perf_counter() - t0)

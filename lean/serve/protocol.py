"""uvicorn's httptools protocol with the bounds a socket open to clients needs.

uvicorn bounds the idle time between requests (timeout_keep_alive) and nothing else: a client that
sends half a request line, half its headers or half its body, or connects and says nothing, holds
its descriptor for as long as it likes, and httptools buffers a header line of any length. Here each
connection is in one phase at a time, and each phase has its bound:

    idle     nothing of a request yet (new, or after an answer)   closed after timeout_keep_alive, silently
    headers  from the first byte to the end of the headers       408 after header_timeout_s; 431 past max_header_bytes
    body     from the end of the headers to the end of the body  408 after body_timeout_s
    app      the whole request is read; the model works          no bound here (the batcher's queue bounds it)

and the server holds at most `limit_concurrency` connections: one more is answered 503 and closed at
once, so a flood of half-open sockets cannot take every descriptor. (uvicorn's own limit_concurrency
answers 503 only once a request's headers arrive, which a half-open socket never sends.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from lean.serve.errors import ServeError


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int
    limit_concurrency: int
    retry_after_s: int = 1

    @classmethod
    def from_config(cls, config) -> "ConnectionLimits":
        return cls(config.header_timeout_s, config.body_timeout_s, config.max_header_bytes,
                   config.limit_concurrency, config.retry_after_s)


def protocol_class(limits: ConnectionLimits, metrics=None) -> type:
    """The protocol uvicorn instantiates per connection (its `http=` setting), bound to these limits;
    with `metrics` (lean.serve.metrics.ServeMetrics) it counts open connections and those it cut."""
    return type("LeanHttpProtocol", (LeanHttpProtocol,), {"limits": limits, "metrics": metrics})


class LeanHttpProtocol(HttpToolsProtocol):
    limits: ConnectionLimits  # set by protocol_class()
    metrics = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._count_open()
        self._phase, self._header_bytes, self._timer = "idle", 0, None
        if len(self.connections) > self.limits.limit_concurrency:
            n = self.limits.limit_concurrency
            self._refuse(ServeError(503, "too_many_connections", f"the server holds its limit of {n} open "
                                    "connections (--limit-concurrency): retry after a pause",
                                    headers={"Retry-After": str(self.limits.retry_after_s)},
                                    limit={"name": "limit_concurrency", "value": n}))
            return
        # a connection that has sent nothing yet is as idle as one between requests
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)
        self._count_open()

    def _count_open(self) -> None:
        if self.metrics is not None:
            self.metrics.connections.set(len(self.connections))

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():  # refused or timed out: what follows is not read
            return
        if self._phase == "idle":
            self._enter("headers", self.limits.header_timeout_s)
            self._header_bytes = 0
        super().data_received(data)
        if self._phase == "headers" and not self.transport.is_closing():
            # headers still incomplete after this read: httptools holds them all, so count them
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(self._headers_too_large(f"over {self._header_bytes} bytes"))

    # ---- parser callbacks (a refused connection's remaining bytes are ignored) -----------------

    def on_message_begin(self) -> None:
        if not self.transport.is_closing():
            super().on_message_begin()

    def on_headers_complete(self) -> None:
        if self.transport.is_closing():
            return
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:  # complete within one read: counted exactly here
            return self._refuse(self._headers_too_large(f"{size} bytes"))
        self._enter("body", self.limits.body_timeout_s)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.transport.is_closing():
            return
        if self._phase == "body":
            self._disarm()
            self._phase = "app"
            if self.cycle is not None and self.cycle.response_complete:  # answered before its body ended (413)
                self._phase = "idle"
                self._unset_keepalive_if_required()
                self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                    self.timeout_keep_alive_handler)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._phase == "app":  # otherwise the body is still arriving, under its own timer
            self._phase = "idle"  # uvicorn arms its keep-alive timer for this phase
        super().on_response_complete()

    # ---- phases and refusals -------------------------------------------------------------------

    def _enter(self, phase: str, timeout_s: float) -> None:
        self._disarm()
        self._phase = phase
        self._timer = self.loop.call_later(timeout_s, self._timed_out, phase)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self, phase: str) -> None:
        self._timer = None
        if self._phase != phase or self.transport.is_closing():
            return
        what, option, seconds = (("request headers", "--header-timeout", self.limits.header_timeout_s)
                                 if phase == "headers" else
                                 ("request body", "--body-timeout", self.limits.body_timeout_s))
        self._refuse(ServeError(408, "request_timeout", f"the {what} did not arrive within {seconds:g} s "
                                f"({option}): send the whole request at once",
                                limit={"name": option[2:].replace("-", "_"), "value": seconds}))

    def _headers_too_large(self, got: str) -> ServeError:
        n = self.limits.max_header_bytes
        return ServeError(431, "headers_too_large", f"request line and headers of {got} are over the server's "
                          f"limit of {n} bytes (--max-header-bytes): send shorter headers",
                          limit={"name": "max_header_bytes", "value": n})

    def _refuse(self, error: ServeError) -> None:
        """Answer with `error` (unless this request's answer has begun) and close the connection."""
        self._disarm()
        # in the headers phase self.cycle, if any, is the previous request's, long answered
        answered = self._phase == "body" and self.cycle is not None and self.cycle.response_started
        self._phase = "closed"
        self._unset_keepalive_if_required()
        if self.metrics is not None:
            self.metrics.cut.labels(error.extra["limit"]["name"]).inc()
        if not answered:
            body = json.dumps(error.body()).encode()
            head = [STATUS_LINE[error.status], b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body), b"connection: close\r\n"]
            head += [f"{k.lower()}: {v}\r\n".encode() for k, v in error.headers.items()]
            self.transport.write(b"".join(head) + b"\r\n" + body)
        self.transport.close()

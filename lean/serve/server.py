"""Run the app on uvicorn until SIGTERM or Ctrl-C; then stop accepting, drain, and exit 0.

    from lean.serve import ServeConfig, serve
    serve(ServeConfig(models=["runs/student-int8"], port=8000))

The listening socket is bound here, before any model loads, so a taken port or an address this
machine does not have is one line and exit 2. Connections go through lean.serve.protocol, which
bounds idle, slow and oversized clients.
"""

from __future__ import annotations

import logging
import socket

from lean.errors import LeanError

log = logging.getLogger("lean.serve")


def serve(config, log_level: str = "info", access_log: bool = False) -> None:
    """Serve until a signal; returns (so the process exits 0) once requests in flight are answered."""
    sock = bind_socket(config.host, config.port)
    try:
        server = build_server(config, log_level, access_log)
        make_room_for_connections(config.limit_concurrency)
        host, port = sock.getsockname()[:2]
        log.info("lean serve listening on http://%s:%d (Ctrl-C or SIGTERM to stop)",
                 f"[{host}]" if ":" in host else host, port)
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise LeanError(f"the server did not start on {config.host}:{config.port} (see the log above)")


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (port 0: any free one), not yet listening; OSError becomes LeanError."""
    sock = None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may reuse a port in TIME_WAIT
        sock.bind(address)
    except OSError as e:
        if sock is not None:
            sock.close()
        reason = e.strerror or str(e) or type(e).__name__
        raise LeanError(f"cannot listen on {host}:{port}: {reason}: choose a free --port, or a --host "
                        "this machine has (127.0.0.1, 0.0.0.0 or one of its addresses)") from None
    return sock


def make_room_for_connections(limit: int, spare: int = 128) -> None:
    """Raise the soft descriptor limit so that `limit` connections fit beside `spare` other files (models,
    logs, onnxruntime's); where the hard limit forbids it, say so: the cap could not protect the process."""
    try:
        import resource
    except ImportError:  # Windows: no descriptor limit to speak of
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = limit + spare
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if raised > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    if raised < need:
        log.warning("this process may open %d files (ulimit -n), too few for --limit-concurrency %d and %d more: "
                    "lower --limit-concurrency to %d or raise the limit", raised, limit, spare, max(1, raised - spare))


def build_server(config, log_level: str = "info", access_log: bool = False):
    """The uvicorn server for `config` (run it with `.run(sockets=[bind_socket(...)])`)."""
    import uvicorn

    from lean.serve.app import build_app
    from lean.serve.protocol import ConnectionLimits, protocol_class

    app = build_app(config)
    state = app.state.lean

    class DrainingServer(uvicorn.Server):
        """uvicorn re-raises the signal after a graceful shutdown (exit status -15); a model server that
        drained cleanly should exit 0, so the signal only starts the drain here."""

        def handle_exit(self, sig, frame):
            state.draining = True  # /ready turns 503 at once
            if self.should_exit:
                self.force_exit = True  # a second signal: stop waiting
            self.should_exit = True

    uvicorn_config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on",
                                    timeout_graceful_shutdown=config.drain_timeout_s,
                                    http=protocol_class(ConnectionLimits.from_config(config), state.metrics),
                                    timeout_keep_alive=config.timeout_keep_alive_s,
                                    ws="none")  # no WebSocket routes: an upgrade must not take the socket past the bounds
    logger = logging.getLogger("lean.serve")
    logger.setLevel(log_level.upper())
    if not logger.handlers:  # uvicorn configures its own loggers only; model loading should show beside them
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
    return DrainingServer(uvicorn_config)

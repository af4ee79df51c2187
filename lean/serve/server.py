"""Run the app on uvicorn until SIGTERM or Ctrl-C; then stop accepting, drain, and exit 0.

    from lean.serve import ServeConfig, serve
    serve(ServeConfig(models=["runs/student-int8"], port=8000))
"""

from __future__ import annotations

import logging


def serve(config, log_level: str = "info", access_log: bool = False) -> None:
    """Serve until a signal; returns (so the process exits 0) once requests in flight are answered."""
    import uvicorn

    from lean.serve.app import build_app

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

    uvicorn_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                                    access_log=access_log, timeout_graceful_shutdown=config.drain_timeout_s,
                                    lifespan="on")
    logger = logging.getLogger("lean.serve")
    logger.setLevel(log_level.upper())
    if not logger.handlers:  # uvicorn configures its own loggers only; model loading should show beside them
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
    server = DrainingServer(uvicorn_config)
    server.run()
    if not server.started:
        from lean.errors import LeanError

        raise LeanError(f"the server did not start on {config.host}:{config.port} (see the log above): "
                        "is the port taken? choose another with --port")

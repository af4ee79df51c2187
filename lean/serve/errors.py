"""HTTP errors of the server: a status, a machine-readable type, a message that says what to do.

Every refusal is JSON `{"error": {"type", "message", ...}}`, so a client can tell a limit from a bug.
"""

from __future__ import annotations

from typing import Any


class ServeError(Exception):
    """An answer other than 200: raised anywhere in a request, turned into JSON by the app."""

    def __init__(self, status: int, type: str, message: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.type, self.message = status, type, message
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "message": self.message, **self.extra}}


class QueueFull(ServeError):
    """429: the model's queue holds as many texts as it may; the client should retry after a pause."""

    def __init__(self, model: str, limit: int, retry_after_s: int):
        super().__init__(429, "queue_full", f"model '{model}' has {limit} texts waiting (--max-queue): "
                         f"retry after {retry_after_s} s", headers={"Retry-After": str(retry_after_s)},
                         limit={"name": "max_queue", "value": limit})


def limit_error(name: str, value: int, got: int, what: str) -> ServeError:
    """422 naming the limit a request broke, its value and what the request had."""
    return ServeError(422, "limit_exceeded", f"{what}: {got} is over the server's limit of {value} (--{name.replace('_', '-')}); "
                      "split the request or ask the operator to raise it", limit={"name": name, "value": value, "got": got})

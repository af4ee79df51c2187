"""What `lean serve` serves and how: model specs (NAME=DIR) and the limits, checked before anything loads.

This module imports nothing heavy: the CLI builds a ServeConfig, and a bad value is one LeanError line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from lean.errors import LeanError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class ModelSpec:
    """One served model: its URL name and its exported ONNX directory."""

    name: str
    path: Path

    @classmethod
    def parse(cls, spec: str) -> "ModelSpec":
        """`DIR` (named after the directory) or `NAME=DIR`."""
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            name = Path(spec.rstrip("/")).name
        if not NAME_PATTERN.match(name):
            raise LeanError(f"model name '{name}' cannot be used in a URL: use letters, digits, '.', '_' or '-' "
                            "(give NAME=DIR to choose one)")
        directory = Path(path)
        from lean.runtime.openvino import is_openvino_dir
        from lean.runtime.tfidf import is_tfidf_dir

        if not (directory / "model.onnx").is_file() and not is_tfidf_dir(directory) and not is_openvino_dir(directory):
            raise LeanError(f"'{path}' is not an exported ONNX directory (no model.onnx, nor OpenVINO's model.xml): "
                            "run lean export first")
        return cls(name=name, path=directory)


@dataclass
class ServeConfig:
    """Everything the server needs; every limit is checked here so a typo fails before any model loads."""

    models: list[ModelSpec] = field(default_factory=list)
    host: str = "127.0.0.1"  # loopback unless asked: a model server is put behind a proxy deliberately
    port: int = 8000
    max_batch_size: int = 32  # texts per onnxruntime call; 1 turns batching off
    max_wait_ms: float = 5.0  # how long the first queued text waits for company before its batch runs
    max_queue: int = 256  # texts waiting per model; beyond this a request gets 429 rather than an ever-longer wait
    max_texts: int = 64  # texts in one request
    max_text_chars: int = 20_000  # characters in one text (the tokenizer's cost grows with it even if truncated)
    max_body_bytes: int = 1_048_576  # a request body larger than this is refused (413) before it is parsed
    max_new_tokens: int = 256  # ceiling on a generate request's max_new_tokens
    max_length: int | None = None  # tokens per text; default: the export's max_length
    threads: int | None = None  # onnxruntime intra-op threads per model, set once at load; default physical cores
    provider: str | None = None  # onnxruntime execution provider; default CUDA when present, else CPU
    # onnxruntime's idle threads spin between calls by default; in a server that CPU is what the event
    # loop needs to parse the next requests, so spinning is off unless asked for
    ort_spinning: bool = False
    length_buckets: tuple[int, ...] = (16, 32, 64, 128, 256, 512)  # texts in one batch are padded per bucket
    drain_timeout_s: float = 30.0  # after SIGTERM, how long requests in flight may take before they are cut
    retry_after_s: int = 1  # the Retry-After a 429 or a not-yet-ready 503 carries
    # bounds on slow and half-open clients (lean/serve/protocol.py): each holds a descriptor while it waits
    timeout_keep_alive_s: float = 5.0  # a connection with no request under way is closed after this idle time
    header_timeout_s: float = 10.0  # request line and headers must be complete this long after their first byte
    body_timeout_s: float = 30.0  # a request body must be complete this long after its headers
    limit_concurrency: int = 512  # open connections; one more is answered 503 and closed at once
    max_header_bytes: int = 16_384  # request line + headers; beyond it 431 and the connection is closed

    def __post_init__(self):
        self.models = [m if isinstance(m, ModelSpec) else ModelSpec.parse(str(m)) for m in self.models]
        names = [m.name for m in self.models]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate:
            raise LeanError(f"two models are named '{duplicate}': give one of them another name with NAME=DIR")
        for key in ("max_batch_size", "max_queue", "max_texts", "max_text_chars", "max_body_bytes",
                    "max_new_tokens", "retry_after_s", "limit_concurrency", "max_header_bytes"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LeanError(f"{_option(key)} must be a whole number of at least 1, got {value!r}")
        for key in ("max_wait_ms", "drain_timeout_s"):
            value = getattr(self, key)
            if not _finite(value) or value < 0:
                raise LeanError(f"{_option(key)} must be a finite number of at least 0, got {value!r}")
        for key in ("timeout_keep_alive_s", "header_timeout_s", "body_timeout_s"):
            value = getattr(self, key)
            if not _finite(value) or value <= 0:
                raise LeanError(f"{_option(key)} must be a finite number of seconds above 0, got {value!r}")
        if self.max_header_bytes < 1024:
            raise LeanError(f"--max-header-bytes must be at least 1024 (a request line and its usual headers), "
                            f"got {self.max_header_bytes}")
        if not 0 <= self.port <= 65535:
            raise LeanError(f"--port must be between 0 and 65535, got {self.port}")
        if self.max_length is not None and self.max_length < 1:
            raise LeanError(f"--max-length must be at least 1, got {self.max_length}")
        if self.threads is not None and self.threads < 1:
            raise LeanError(f"--threads must be at least 1, got {self.threads}")
        if self.max_queue < self.max_texts:
            raise LeanError(f"--max-queue ({self.max_queue}) must hold at least one full request "
                            f"(--max-texts {self.max_texts}): raise it or lower --max-texts")
        buckets = tuple(sorted(set(int(b) for b in self.length_buckets)))
        if not buckets or buckets[0] < 1:
            raise LeanError(f"length buckets must be positive token counts, got {self.length_buckets}")
        self.length_buckets = buckets


def _option(key: str) -> str:
    """The command-line option of a config field: drain_timeout_s -> --drain-timeout."""
    return "--" + key.removesuffix("_s").replace("_", "-")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

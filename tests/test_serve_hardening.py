"""lean serve under misbehaving clients: real sockets on 127.0.0.1 against a server with short timeouts.

    python -m pytest tests/test_serve_hardening.py -x -q      # ~15 s on 2 cores, no model needed

The server runs in a thread of this process with no models (/health and the body limit need none),
on a port the kernel picks; every wait below is bounded.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import invoke
from lean.errors import LeanError

pytest.importorskip("uvicorn", reason="lean serve needs the serve extra: pip install 'lean[serve]'")
pytest.importorskip("httptools", reason="lean serve needs the serve extra: pip install 'lean[serve]'")

FAST = dict(timeout_keep_alive_s=0.6, header_timeout_s=0.6, body_timeout_s=0.6)


@contextlib.contextmanager
def live_server(**options):
    """A real lean server on 127.0.0.1 in a thread; yields its port."""
    from lean.serve import ServeConfig
    from lean.serve.server import bind_socket, build_server

    sock = bind_socket("127.0.0.1", 0)
    server = build_server(ServeConfig(models=[], **options), log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def read_until_closed(conn: socket.socket, within_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (an assertion if it has not within_s)."""
    data, deadline = b"", time.monotonic() + within_s
    while time.monotonic() < deadline:
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = conn.recv(65536)
        except ConnectionResetError:
            return data
        except socket.timeout:
            break
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the server kept the connection open for {within_s} s; got {data[:200]!r}")


def answer(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def get_health(port: int) -> int:
    with connect(port) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        return answer(read_until_closed(conn))[0]


def test_slow_headers_get_408_and_the_connection_is_closed():
    with live_server(**FAST) as port, connect(port) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        start, raw = time.monotonic(), b""
        conn.settimeout(0.1)
        for _ in range(100):  # a slowloris: one header byte every 0.1 s, never the end of the headers
            try:
                conn.sendall(b"X")
                raw = conn.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                pass
            break
        raw += read_until_closed(conn)
        waited = time.monotonic() - start
    status, body = answer(raw)
    assert status == 408 and body["error"]["type"] == "request_timeout", raw
    assert "--header-timeout" in body["error"]["message"]
    assert 0.5 <= waited < 5  # counted from the first byte, however slowly the rest comes


def test_a_partial_body_gets_408_and_an_idle_socket_is_closed():
    with live_server(**FAST) as port:
        with connect(port) as conn:
            conn.sendall(b"POST /v1/models/m/predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n" + b'{"texts": [')  # 11 of 100 bytes, then nothing
            status, body = answer(read_until_closed(conn))
        assert status == 408 and "--body-timeout" in body["error"]["message"]
        with connect(port) as conn:  # the app never answered it: counted as the client's 499, not a 500
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            metrics = read_until_closed(conn).decode()
        assert 'status="499"} 1.0' in metrics and 'status="500"' not in metrics
        with connect(port) as conn:  # connects and says nothing: closed silently after the keep-alive timeout
            start = time.monotonic()
            assert read_until_closed(conn) == b""
            assert time.monotonic() - start >= 0.5
        with connect(port) as conn:  # one request, then idle: kept alive a while, then closed
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            raw = read_until_closed(conn)
        assert raw.startswith(b"HTTP/1.1 200") and raw.count(b"HTTP/1.1") == 1
        assert get_health(port) == 200


def test_a_body_answered_early_with_413_is_still_bounded_and_the_connection_reusable():
    post = b"POST /v1/models/m/predict HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n"
    with live_server(max_body_bytes=1024, **FAST) as port:
        with connect(port) as conn:  # refused on its Content-Length; the body follows, then a second request
            conn.sendall(post)
            first = conn.recv(65536)
            conn.sendall(b"x" * 2000 + b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            rest = read_until_closed(conn)  # the second answer, then the keep-alive timeout
        assert first.startswith(b"HTTP/1.1 413") and rest.startswith(b"HTTP/1.1 200") and rest.count(b"HTTP/1.1") == 1
        with connect(port) as conn:  # refused, and the announced body never comes: closed, with no second answer
            conn.sendall(post + b"x" * 10)
            raw = read_until_closed(conn)
        assert raw.startswith(b"HTTP/1.1 413") and raw.count(b"HTTP/1.1") == 1, raw


def test_headers_over_max_header_bytes_get_431_and_a_huge_line_is_not_buffered():
    with live_server(max_header_bytes=4096, **FAST) as port:
        with connect(port) as conn:  # complete headers over the limit
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
            status, body = answer(read_until_closed(conn))
        assert status == 431 and body["error"]["limit"] == {"name": "max_header_bytes", "value": 4096}
        with connect(port) as conn:  # a header line that never ends: refused as it grows past the limit
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 6000)
            assert answer(read_until_closed(conn))[0] == 431
        sent = 0
        with connect(port) as conn:  # 100 MB offered: the server stops reading long before
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: ")
            chunk = b"a" * 65536
            with contextlib.suppress(OSError):
                while sent < 100 * 2**20:
                    conn.sendall(chunk)
                    sent += len(chunk)
        assert sent < 100 * 2**20, "the server read a 100 MB header line"
        with connect(port) as conn:  # headers within the limit are served
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Ok: " + b"a" * 3000 + b"\r\nConnection: close\r\n\r\n")
            assert answer(read_until_closed(conn))[0] == 200


def test_connections_over_the_cap_get_503_at_once_and_half_open_ones_time_out():
    # 2 s for the headers: every half-open socket is still waiting when the 21st arrives, even on a loaded machine
    with live_server(limit_concurrency=20, **{**FAST, "header_timeout_s": 2.0}) as port:
        half_open = [connect(port) for _ in range(20)]
        for conn in half_open:
            conn.sendall(b"GET /health HTTP/1.1\r\n")
        with connect(port) as extra:  # the 21st: refused at once, not left waiting
            status, body = answer(read_until_closed(extra, within_s=3))
        assert status == 503 and body["error"]["limit"] == {"name": "limit_concurrency", "value": 20}
        for conn in half_open:  # each gets its 408 within the header timeout, freeing its descriptor
            assert answer(read_until_closed(conn))[0] == 408
            conn.close()
        deadline = time.monotonic() + 5
        while (status := get_health(port)) != 200 and time.monotonic() < deadline:
            time.sleep(0.05)  # the server may see the last closes a moment after the client
        assert status == 200
        with connect(port) as conn:
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            metrics = read_until_closed(conn).decode()
        assert 'lean_connections_closed_by_limit_total{limit="limit_concurrency"} 1.0' in metrics
        assert 'lean_connections_closed_by_limit_total{limit="header_timeout"} 20.0' in metrics
        assert "lean_open_connections 1.0" in metrics  # this one


@pytest.fixture
def unread_model(tmp_path: Path) -> Path:
    """A directory that passes the model-spec check; these runs stop before any model loads."""
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.onnx").write_bytes(b"")
    return model


def test_bind_failures_are_one_line_and_exit_2(unread_model: Path):
    model = unread_model
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args, reason in [(["--port", str(port)], "in use"),
                             (["--host", "192.0.2.1", "--port", "0"], "assign requested address")]:
            result = invoke("serve", str(model), *args)
            assert result.returncode == 2, (args, result.stdout, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "cannot listen on" in lines[0] and reason in lines[0], result.stderr


def test_port_0_takes_a_free_port_and_the_first_log_line_names_it(unread_model: Path):
    server = subprocess.Popen([sys.executable, "-m", "lean.cli", "serve", str(unread_model), "--port", "0"],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        first = server.stderr.readline()
        match = re.search(r"lean serve listening on http://127\.0\.0\.1:(\d+)", first)
        assert match, first
        deadline = time.monotonic() + 60
        while True:  # bound from the first line; answering once uvicorn listens on it
            with contextlib.suppress(OSError):
                assert get_health(int(match.group(1))) == 200
                break
            assert time.monotonic() < deadline and server.poll() is None, "no answer on the logged port"
            time.sleep(0.1)
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    finally:
        if server.poll() is None:
            server.kill()
        server.stderr.close()


@pytest.mark.skipif(sys.platform == "win32", reason="no descriptor limit to raise")
def test_the_descriptor_limit_is_raised_to_fit_the_connection_cap_or_the_shortfall_is_said():
    code = """
import logging, resource, sys
logging.basicConfig(format="%(levelname)s: %(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (300, int(sys.argv[1])))
from lean.serve.server import make_room_for_connections
make_room_for_connections(512)
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""
    room = subprocess.run([sys.executable, "-c", code, "4096"], capture_output=True, text=True, timeout=60)
    assert room.returncode == 0 and room.stdout.split() == ["640"] and not room.stderr, room.stderr
    short = subprocess.run([sys.executable, "-c", code, "300"], capture_output=True, text=True, timeout=60)
    assert short.returncode == 0 and short.stdout.split() == ["300"], short.stderr
    assert "lower --limit-concurrency to 172" in short.stderr


def test_connection_limits_are_checked_before_anything_starts(unread_model: Path):
    from lean.serve import ServeConfig

    for args, message in [(["--header-timeout", "0"], "--header-timeout must be a finite number of seconds above 0"),
                          (["--max-header-bytes", "10"], "--max-header-bytes must be at least 1024"),
                          (["--limit-concurrency", "0"], "--limit-concurrency must be a whole number")]:
        result = invoke("serve", str(unread_model), *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr

    for options, message in [(dict(header_timeout_s=0), "--header-timeout must be a finite number of seconds"),
                             (dict(body_timeout_s=float("inf")), "--body-timeout must be"),
                             (dict(timeout_keep_alive_s=-1), "--timeout-keep-alive must be"),
                             (dict(limit_concurrency=0), "--limit-concurrency must be a whole number"),
                             (dict(max_header_bytes=100), "--max-header-bytes must be at least 1024")]:
        with pytest.raises(LeanError, match=message.replace("-", "\\-")):
            ServeConfig(models=[], **options)

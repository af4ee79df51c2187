"""lean serve as a real process: SIGTERM drains the requests in flight and exits 0; bad options are one line.

    python -m pytest tests/test_serve_process.py -x -q
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import invoke, run_cli
from lean.errors import LeanError

pytest.importorskip("uvicorn", reason="lean serve needs the serve extra: pip install 'lean[serve]'")


@pytest.fixture(scope="session")
def onnx_bert(tiny_bert_dir, tmp_path_factory):
    from test_serve import exported_bert

    return exported_bert(tiny_bert_dir, tmp_path_factory)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_sigterm_stops_accepting_drains_in_flight_requests_and_exits_0(onnx_bert):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    # a long max-wait keeps the requests queued in the server when the signal arrives
    server = subprocess.Popen([sys.executable, "-m", "lean.cli", "serve", f"bert={onnx_bert}", "--port", str(port),
                               "--max-wait-ms", "5000", "--max-batch-size", "64"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                with urllib.request.urlopen(f"{base}/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert time.monotonic() < deadline, "server never became ready"
            time.sleep(0.2)
        answers: list = [None] * 6

        def ask(i):
            answers[i] = _post(f"{base}/v1/models/bert/predict", {"texts": [f"text number {i}"]})

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(answers))]
        for t in threads:
            t.start()
        # all six are in the server's queue, waiting for their batch (a loaded machine can take a while)
        queued = 'lean_queue_depth{model="bert"} 6.0'
        while queued not in urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode():
            assert time.monotonic() < deadline, "the six requests never all reached the queue"
            time.sleep(0.02)
        sent = time.monotonic()
        server.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"{base}/health", timeout=5)  # no longer accepting
        for t in threads:
            t.join(60)
        assert server.wait(60) == 0
        assert time.monotonic() - sent < 30
    finally:
        if server.poll() is None:
            server.kill()
    log = server.stdout.read()
    assert [a[0] for a in answers] == [200] * 6, (answers, log)
    assert all(a[1]["predictions"][0]["label"] for a in answers)
    assert "Traceback" not in log


def test_bad_options_are_one_line_and_exit_2(onnx_bert, tmp_path):
    for args, message in [
        (["serve", str(tmp_path)], "is not an exported ONNX directory"),
        (["serve", str(onnx_bert), "--max-batch-size", "0"], "--max-batch-size must be a whole number of at least 1"),
        (["serve", str(onnx_bert), "--max-wait-ms", "nan"], "--max-wait-ms must be a finite number"),
        (["serve", f"a b={onnx_bert}"], "cannot be used in a URL"),
        (["serve", f"m={onnx_bert}", f"m={onnx_bert}"], "two models are named 'm'"),
        (["serve", str(onnx_bert), "--max-queue", "4", "--max-texts", "8"], "--max-queue (4) must hold"),
    ]:
        result = invoke(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_config_rejects_bad_values_before_loading(onnx_bert):
    from lean.serve import ServeConfig

    config = ServeConfig(models=[str(onnx_bert)], length_buckets=(64, 16, 16))
    assert config.models[0].name == "bert" and config.length_buckets == (16, 64)
    with pytest.raises(LeanError, match="--max-body-bytes"):
        ServeConfig(models=[str(onnx_bert)], max_body_bytes=0)
    with pytest.raises(LeanError, match="length buckets"):
        ServeConfig(models=[str(onnx_bert)], length_buckets=(0, 8))


def test_help_stays_light():
    done = run_cli("serve", "--help")
    assert done.returncode == 0 and "--max-batch-size" in done.stdout
    code = "import sys, lean.cli, lean.serve; print(sorted(m for m in ('torch', 'transformers', 'fastapi') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ}).stdout.strip() == "[]"

"""lean serve: the app on a tiny exported BERT, in process (httpx's ASGI transport) and as a real server.

    python -m pytest tests/test_serve.py -x -q        # ~1.5 min on 2 cores, most of it the export
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import bbc_rows, invoke

pytest.importorskip("fastapi", reason="lean serve needs the serve extra: pip install 'lean[serve]'")
pytest.importorskip("prometheus_client", reason="lean serve needs the serve extra: pip install 'lean[serve]'")


def exported_bert(tiny_bert_dir: Path, tmp_path_factory) -> Path:
    """The tiny BERT exported once per test session (shared by the test_serve* files)."""
    from lean.export import ExportConfig, export

    out = tmp_path_factory.getbasetemp() / "serve-onnx" / "bert"
    if not (out / "model.onnx").is_file():
        out.parent.mkdir(exist_ok=True)
        export(str(tiny_bert_dir), ExportConfig(max_eval_samples=8), str(out))
    return out


@pytest.fixture(scope="session")
def onnx_bert(tiny_bert_dir, tmp_path_factory) -> Path:
    return exported_bert(tiny_bert_dir, tmp_path_factory)


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return [r["text"] for r in bbc_rows(2)] + ["Short one.", "", "Rates rose.", "é ünïcode ✓"]


@contextlib.asynccontextmanager
async def running(app):
    """The app with its lifespan, ready; yields an httpx client talking to it in process."""
    import httpx

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://lean") as client:
            for _ in range(600):
                if (await client.get("/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"never ready: {(await client.get('/v1/models')).json()}")
            yield client


def app_for(onnx_bert: Path, loader=None, **options):
    from lean.serve import ServeConfig, build_app
    from lean.serve.app import default_loader

    return build_app(ServeConfig(models=[f"bert={onnx_bert}"], **options), loader=loader or default_loader)


def test_import_and_app_never_load_torch(onnx_bert):
    code = f"""
import asyncio, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_serve import app_for, running
async def main():
    async with running(app_for({str(onnx_bert)!r})) as client:
        assert (await client.post("/v1/models/bert/predict", json={{"texts": ["Shares fell."]}})).status_code == 200
asyncio.run(main())
heavy = sorted(m for m in ("torch", "transformers", "optimum") if m in sys.modules)
print("heavy:", heavy)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTEST_VERSION": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "heavy: []" in done.stdout


def test_predict_answers_equal_lean_predict(onnx_bert, texts):
    cli = invoke("predict", str(onnx_bert), *texts)
    assert cli.returncode == 0, cli.stderr
    expected = [json.loads(line) for line in cli.stdout.splitlines()]

    async def main():
        async with running(app_for(onnx_bert, max_wait_ms=50)) as client:
            whole = await client.post("/v1/models/bert/predict", json={"texts": texts})
            # one text per request, all at once: they share batches, each answer must still be its own
            singles = await asyncio.gather(*[client.post("/v1/models/bert/predict", json={"texts": [t]})
                                             for t in texts])
            metrics = (await client.get("/metrics")).text
            return whole, singles, metrics

    whole, singles, metrics = asyncio.run(main())
    assert whole.status_code == 200 and whole.json()["model"] == "bert"
    _assert_same_predictions(whole.json()["predictions"], expected)
    _assert_same_predictions([r.json()["predictions"][0] for r in singles], expected)
    batches = _samples(metrics, "lean_batch_size_count")
    assert sum(batches.values()) < 2 + len(texts), "concurrent single-text requests were never batched"


def _assert_same_predictions(got: list[dict], expected: list[dict]) -> None:
    assert [p["label"] for p in got] == [p["label"] for p in expected]
    for g, e in zip(got, expected):
        assert g["scores"].keys() == e["scores"].keys()
        # padding to a different length may change the last bits of a float32 matmul, nothing more
        assert g["score"] == pytest.approx(e["score"], abs=1e-6)
        assert list(g["scores"].values()) == pytest.approx(list(e["scores"].values()), abs=1e-6)


def _samples(text: str, name: str, **labels) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


BAD_REQUESTS = [
    ("texts is a string", {"texts": "one text"}, 422, "invalid_request"),
    ("a text is a number", {"texts": ["ok", 3]}, 422, "invalid_request"),
    ("no texts field", {"inputs": ["a"]}, 422, "invalid_request"),
    ("empty list", {"texts": []}, 422, "invalid_request"),
    ("too many texts", {"texts": ["a"] * 9}, 422, "max_texts"),
    ("text too long", {"texts": ["x" * 501]}, 422, "max_text_chars"),
]


def test_every_bad_input_gets_its_4xx_with_a_json_error(onnx_bert):
    async def main():
        async with running(app_for(onnx_bert, max_texts=8, max_text_chars=500, max_body_bytes=4096,
                                   max_queue=16)) as client:
            answers = {why: await client.post("/v1/models/bert/predict", json=body) for why, body, _, _ in BAD_REQUESTS}
            answers["unknown model"] = await client.post("/v1/models/nope/predict", json={"texts": ["a"]})
            answers["broken json"] = await client.post("/v1/models/bert/predict", content=b'{"texts": [',
                                                       headers={"content-type": "application/json"})
            answers["declared body too large"] = await client.post("/v1/models/bert/predict",
                                                                   json={"texts": ["y" * 5000]})

            async def chunks():  # no Content-Length: counted as it arrives
                for _ in range(10):
                    yield b"z" * 1000

            answers["streamed body too large"] = await client.post("/v1/models/bert/predict", content=chunks())
            answers["generate on a classifier"] = await client.post("/v1/models/bert/generate", json={"prompt": "a"})
            after = await client.post("/v1/models/bert/predict", json={"texts": ["still fine"]})
            return answers, after

    answers, after = asyncio.run(main())
    for why, _, status, kind in BAD_REQUESTS:
        r = answers[why]
        assert r.status_code == status, (why, r.text)
        error = r.json()["error"]
        assert error["message"]
        if kind.startswith("max_"):
            assert error["type"] == "limit_exceeded" and error["limit"]["name"] == kind, (why, error)
            assert f"--{kind.replace('_', '-')}" in error["message"]
    assert answers["unknown model"].status_code == 404 and "GET /v1/models" in answers["unknown model"].text
    assert answers["broken json"].status_code == 422
    for why in ("declared body too large", "streamed body too large"):
        assert answers[why].status_code == 413, why
        assert answers[why].json()["error"]["limit"] == {"name": "max_body_bytes", "value": 4096}
    assert answers["generate on a classifier"].status_code == 422
    assert after.status_code == 200


def slow_loader(delay_s: float, poison: str | None = None):
    """A loader whose model takes `delay_s` per batch and fails any batch holding `poison`."""
    from lean.serve.app import default_loader

    def load(spec, config):
        model = default_loader(spec, config)
        run, bad = model.run, model.tokenizer.token_to_id(poison) if poison else None

        def slow_run(feed):
            time.sleep(delay_s)
            if bad is not None and (feed["input_ids"] == bad).any():
                raise RuntimeError("poisoned input")
            return run(feed)

        model.run = slow_run
        return model

    return load


def test_overload_gives_429_with_retry_after_and_no_5xx(onnx_bert):
    async def main():
        app = app_for(onnx_bert, loader=slow_loader(0.05), max_batch_size=4, max_queue=8, max_texts=4, max_wait_ms=1)
        async with running(app) as client:
            answers = await asyncio.gather(*[client.post("/v1/models/bert/predict", json={"texts": ["a", "b"]})
                                             for _ in range(40)])
            return answers, await client.get("/ready"), (await client.get("/metrics")).text

    answers, ready, metrics = asyncio.run(main())
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 429}, codes
    assert codes.count(429) >= 20  # 40 requests of 2 texts against a queue of 8 texts
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["retry-after"] == "1" and refused.json()["error"]["limit"]["name"] == "max_queue"
    assert ready.status_code == 200
    assert sum(_samples(metrics, "lean_rejected_total", model="bert").values()) == codes.count(429)
    assert sum(_samples(metrics, "lean_requests_total", status="429").values()) == codes.count(429)


def test_a_failing_request_fails_alone(onnx_bert):
    async def main():
        app = app_for(onnx_bert, loader=slow_loader(0.0, poison="explode"), max_wait_ms=100)
        async with running(app) as client:
            texts = ["Shares fell.", "explode now", "The team won.", "Rates rose."]
            answers = await asyncio.gather(*[client.post("/v1/models/bert/predict", json={"texts": [t]})
                                             for t in texts])
            return answers, await client.post("/v1/models/bert/predict", json={"texts": ["after"]})

    answers, after = asyncio.run(main())
    assert [r.status_code for r in answers] == [200, 500, 200, 200]
    assert answers[1].json()["error"]["type"] == "inference_failed"
    assert after.status_code == 200


def test_metrics_are_prometheus_text_with_requests_latency_batches_and_queue(onnx_bert):
    from prometheus_client.parser import text_string_to_metric_families

    async def main():
        async with running(app_for(onnx_bert)) as client:
            for _ in range(3):
                await client.post("/v1/models/bert/predict", json={"texts": ["a", "b"]})
            await client.post("/v1/models/bert/predict", json={"texts": 5})
            await client.post("/v1/models/other/predict", json={"texts": ["a"]})
            return await client.get("/metrics")

    r = asyncio.run(main())
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert {"lean_requests", "lean_request_duration_seconds", "lean_batch_size", "lean_queue_depth"} <= set(families)
    route = "/v1/models/{name}/predict"
    assert _samples(r.text, "lean_requests_total", route=route, model="bert", status="200") == \
        {(("model", "bert"), ("route", route), ("status", "200")): 3.0}
    assert sum(_samples(r.text, "lean_requests_total", route=route, model="bert", status="422").values()) == 1
    assert sum(_samples(r.text, "lean_requests_total", route=route, model="", status="404").values()) == 1
    assert sum(_samples(r.text, "lean_request_duration_seconds_count", route=route, model="bert").values()) == 4
    assert sum(_samples(r.text, "lean_batch_size_sum", model="bert").values()) == 6  # 3 requests of 2 texts
    assert list(_samples(r.text, "lean_queue_depth", model="bert").values()) == [0.0]


def test_models_load_once_with_their_threads_and_without_spinning(onnx_bert):
    from lean.serve import ServeConfig
    from lean.serve.app import default_loader

    config = ServeConfig(models=[str(onnx_bert)], threads=1)
    options = default_loader(config.models[0], config).session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = ServeConfig(models=[str(onnx_bert)], ort_spinning=True)
    options = default_loader(spinning.models[0], spinning).session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"

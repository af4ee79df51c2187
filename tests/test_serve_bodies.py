"""lean serve on bodies it cannot use: every one is the client's 4xx in lean's JSON shape, never a 5xx.

    python -m pytest tests/test_serve_bodies.py -x -q      # ~1 min on 2 cores, most of it the shared export
"""

from __future__ import annotations

import asyncio
import gzip

import pytest

from test_serve import app_for, running

pytest.importorskip("fastapi", reason="lean serve needs the serve extra: pip install 'lean[serve]'")

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="session")
def onnx_bert(tiny_bert_dir, tmp_path_factory):
    from test_serve import exported_bert

    return exported_bert(tiny_bert_dir, tmp_path_factory)


def test_a_lone_surrogate_is_the_clients_422_and_its_batch_is_served(onnx_bert):
    lone = b'{"texts": ["Shares fell.", "half a character \\ud800 here"]}'  # JSON may spell one; UTF-8 cannot

    async def main():
        async with running(app_for(onnx_bert, max_wait_ms=200)) as client:
            asks = [client.post("/v1/models/bert/predict", json={"texts": ["Shares fell."]}),
                    client.post("/v1/models/bert/predict", content=lone, headers=JSON),
                    client.post("/v1/models/bert/predict", json={"texts": ["The team won.", "a pair \U0001F600"]}),
                    client.post("/v1/models/bert/generate", content=b'{"prompt": "\\udfff"}', headers=JSON)]
            return await asyncio.gather(*asks)

    good, bad, other, prompt = asyncio.run(main())
    assert good.status_code == 200 and other.status_code == 200
    assert len(other.json()["predictions"]) == 2
    assert bad.status_code == 422, bad.text
    error = bad.json()["error"]
    assert error["type"] == "invalid_request" and "texts.1" in error["message"] and "surrogate" in error["message"]
    assert prompt.status_code == 422 and "surrogate" in prompt.json()["error"]["message"]


# ids are the `why` alone: a body in the id would be long, and a gzip body (its header holds a time) would
# differ between the test workers, which then refuse to run
UNREADABLE = [
    ("invalid UTF-8", b'{"texts": ["caf\xe9"]}', JSON, "not UTF-8"),
    ("latin-1 declared", '{"texts": ["café"]}'.encode("latin-1"), {"content-type": "application/json; charset=latin-1"},
     "not UTF-8"),
    ("nested 100,000 deep", b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON, "nested too deeply"),
    ("gzip", gzip.compress(b'{"texts": ["a"]}', mtime=0), {**JSON, "content-encoding": "gzip"},
     "Content-Encoding 'gzip'"),
    ("gzip on plain JSON", b'{"texts": ["a"]}', {**JSON, "content-encoding": "gzip"}, "send the body uncompressed"),
]


@pytest.mark.parametrize("why, body, headers, says", [pytest.param(*case, id=case[0]) for case in UNREADABLE])
def test_bodies_that_cannot_be_read_are_422_with_the_json_error(onnx_bert, why, body, headers, says):
    async def main():
        async with running(app_for(onnx_bert)) as client:
            refused = await client.post("/v1/models/bert/predict", content=body, headers=headers)
            return refused, await client.post("/v1/models/bert/predict", json={"texts": ["still serving"]})

    refused, after = asyncio.run(main())
    assert refused.status_code == 422, (why, refused.text)
    error = refused.json()["error"]
    assert error["type"] == "invalid_request" and says in error["message"], (why, error)
    assert after.status_code == 200


def test_fastapis_own_refusals_use_the_json_error_shape(onnx_bert):
    async def main():
        async with running(app_for(onnx_bert)) as client:
            return (await client.get("/v1/nowhere"), await client.get("/v1/models/bert/predict"))

    missing, wrong_method = asyncio.run(main())
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["type"] == "method_not_allowed"
    assert wrong_method.headers["allow"] == "POST"

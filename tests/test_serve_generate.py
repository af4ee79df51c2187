"""lean serve's /generate on a tiny exported Llama: streamed pieces add up to `lean predict`'s text.

    python -m pytest tests/test_serve_generate.py -x -q        # ~1 min on 2 cores, most of it the export
"""

from __future__ import annotations

import asyncio
import json

import pytest

from conftest import invoke
from test_serve import running

PROMPTS = ["The government said", "Shares in the company"]


@pytest.fixture(scope="session")
def onnx_llama(tiny_llama_dir, tmp_path_factory):
    from lean.export import ExportConfig, export

    return export(str(tiny_llama_dir), ExportConfig(max_eval_samples=4), str(tmp_path_factory.mktemp("onnx") / "llama"))


def parse_sse(text: str) -> list[tuple[str, dict]]:
    """(event, data) per server-sent event; an event without a name is a 'message'."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields.get("event", "message"), json.loads(fields["data"])))
    return events


@pytest.mark.optimum  # the exported causal LM needs optimum-onnx
def test_streamed_and_whole_generations_equal_lean_predict(onnx_llama):
    from lean.serve import ServeConfig, build_app

    cli = invoke("predict", str(onnx_llama), *PROMPTS, "--max-new-tokens", "12")
    assert cli.returncode == 0, cli.stderr
    expected = [json.loads(line)["generated_text"] for line in cli.stdout.splitlines()]

    async def main():
        async with running(build_app(ServeConfig(models=[f"lm={onnx_llama}"], max_new_tokens=64))) as client:
            streams = [await client.post("/v1/models/lm/generate", json={"prompt": p, "max_new_tokens": 12})
                       for p in PROMPTS]
            whole = [await client.post("/v1/models/lm/generate", json={"prompt": p, "max_new_tokens": 12,
                                                                       "stream": False}) for p in PROMPTS]
            sampled = [await client.post("/v1/models/lm/generate", json={
                "prompt": PROMPTS[0], "max_new_tokens": 12, "temperature": 1.5, "top_k": 50, "top_p": 0.95,
                "seed": 7, "stream": False}) for _ in range(2)]
            bad = {
                "over max_new_tokens": await client.post("/v1/models/lm/generate",
                                                         json={"prompt": "a", "max_new_tokens": 65}),
                "negative temperature": await client.post("/v1/models/lm/generate",
                                                          json={"prompt": "a", "temperature": -1}),
                "prompt not a string": await client.post("/v1/models/lm/generate", json={"prompt": ["a"]}),
                "predict on an LM": await client.post("/v1/models/lm/predict", json={"texts": ["a"]}),
            }
            return streams, whole, sampled, bad, (await client.get("/metrics")).text

    streams, whole, sampled, bad, metrics = asyncio.run(main())
    for response, text in zip(streams, expected):
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(response.text)
        tokens = [data for kind, data in events if kind == "message"]
        (kind, done), = [e for e in events if e[0] != "message"]
        assert kind == "done" and done["generated_text"] == text
        assert "".join(t["text"] for t in tokens) == text and done["tokens"] == len(tokens)
        assert done["finish_reason"] == ("length" if len(tokens) == 12 else "stop")
    assert [r.json()["generated_text"] for r in whole] == expected
    assert sampled[0].json() == sampled[1].json()  # a seed replays a sampled generation
    assert sampled[0].json()["generated_text"] != expected[0]
    assert {why: r.status_code for why, r in bad.items()} == {why: 422 for why in bad}
    assert bad["over max_new_tokens"].json()["error"]["limit"]["name"] == "max_new_tokens"
    assert "lean_generated_tokens_total" in metrics


@pytest.mark.optimum  # the exported causal LM needs optimum-onnx
def test_a_failing_generation_answers_its_error_and_the_model_keeps_serving(onnx_llama, monkeypatch):
    # an exception without a message (it once raised IndexError on the model's thread and the request hung)
    import lean.serve.generate as generate
    from lean.serve import ServeConfig, build_app

    working = generate.stream_ids
    calls = []

    def fails_twice(*args):
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError()
        return working(*args)

    monkeypatch.setattr(generate, "stream_ids", fails_twice)

    async def main():
        async with running(build_app(ServeConfig(models=[f"lm={onnx_llama}"]))) as client:
            ask = {"prompt": PROMPTS[0], "max_new_tokens": 4}
            whole = await asyncio.wait_for(client.post("/v1/models/lm/generate", json={**ask, "stream": False}), 60)
            streamed = await asyncio.wait_for(client.post("/v1/models/lm/generate", json=ask), 60)
            after = await asyncio.wait_for(client.post("/v1/models/lm/generate", json={**ask, "stream": False}), 60)
            return whole, streamed, after

    whole, streamed, after = asyncio.run(main())
    assert whole.status_code == 500
    assert whole.json()["error"] == {"type": "generation_failed", "message": "RuntimeError"}
    assert parse_sse(streamed.text)[-1] == ("error", {"message": "RuntimeError"})
    assert after.status_code == 200 and after.json()["tokens"] > 0

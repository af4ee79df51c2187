"""lean serve's Triton repository: config.pbtxt parsed by tritonclient's model-config protobuf, and the
tokenizer model run with a stand-in for Triton's Python-backend module, checked against lean.runtime.

    python -m pytest tests/test_serve_triton.py -x -q
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import bbc_rows, invoke
from lean.errors import LeanError


@pytest.fixture(scope="session")
def onnx_bert(tiny_bert_dir, tmp_path_factory):
    from test_serve import exported_bert

    return exported_bert(tiny_bert_dir, tmp_path_factory)


def model_config_pb2():
    """tritonclient ships model_config_pb2 under its grpc package, whose __init__ needs grpcio; the
    generated module itself needs only protobuf, so it is loaded from its file."""
    tritonclient = pytest.importorskip("tritonclient", reason="pip install tritonclient to check Triton configs")
    file = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    if not file.is_file():
        pytest.skip(f"this tritonclient has no {file.name}")
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(path: Path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2().ModelConfig())  # unknown fields fail


def test_repository_configs_parse_as_triton_model_configs(onnx_bert, tmp_path):
    from lean.serve import TritonConfig, write_triton_repository

    pb = model_config_pb2()
    out = write_triton_repository(onnx_bert, tmp_path / "repo", TritonConfig(
        name="bbc", max_batch_size=16, max_queue_delay_us=2000, preferred_batch_sizes=(4, 8), instances=2, threads=1))
    assert out == tmp_path / "repo" / "bbc"
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["bbc", "bbc_onnx", "bbc_tokenizer"]

    onnx = parse(tmp_path / "repo" / "bbc_onnx" / "config.pbtxt")
    assert onnx.name == "bbc_onnx" and onnx.backend == "onnxruntime" and onnx.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims)) for i in onnx.input] == [
        (n, pb.TYPE_INT64, [128]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    assert [(o.name, o.data_type, list(o.dims), o.label_filename) for o in onnx.output] == [
        ("logits", pb.TYPE_FP32, [5], "labels.txt")]
    assert list(onnx.dynamic_batching.preferred_batch_size) == [4, 8]
    assert onnx.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.count, g.kind) for g in onnx.instance_group] == [(2, pb.ModelInstanceGroup.KIND_CPU)]
    assert onnx.parameters["intra_op_thread_count"].string_value == "1"
    assert (tmp_path / "repo" / "bbc_onnx" / "1" / "model.onnx").read_bytes() == (onnx_bert / "model.onnx").read_bytes()
    labels = (tmp_path / "repo" / "bbc_onnx" / "labels.txt").read_text().split()
    assert labels == ["business", "entertainment", "politics", "sport", "tech"]

    tok = parse(tmp_path / "repo" / "bbc_tokenizer" / "config.pbtxt")
    assert tok.backend == "python" and [(i.name, i.data_type) for i in tok.input] == [("TEXT", pb.TYPE_STRING)]
    assert [o.name for o in tok.output] == [i.name for i in onnx.input]

    ensemble = parse(out / "config.pbtxt")
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 16
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["bbc_tokenizer", "bbc_onnx"]
    assert dict(steps[0].output_map) == dict(steps[1].input_map) == {n: n for n in ("input_ids", "attention_mask",
                                                                                       "token_type_ids")}
    assert dict(steps[1].output_map) == {"logits": "LOGITS"} and [o.name for o in ensemble.output] == ["LOGITS"]
    assert (out / "1").is_dir()

    with pytest.raises(LeanError, match="already exists"):
        write_triton_repository(onnx_bert, tmp_path / "repo", TritonConfig(name="bbc"))


class _FakeTensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


def fake_python_backend() -> types.ModuleType:
    """The three pieces of triton_python_backend_utils the tokenizer model calls."""
    pb_utils = types.ModuleType("triton_python_backend_utils")
    pb_utils.Tensor = _FakeTensor
    pb_utils.get_input_tensor_by_name = lambda request, name: request[name]
    pb_utils.InferenceResponse = lambda output_tensors, error=None: {"outputs": output_tensors, "error": error}
    pb_utils.TritonError = lambda message: message
    return pb_utils


def test_tokenizer_model_feeds_the_onnx_model_the_logits_lean_runtime_gives(onnx_bert, tmp_path, monkeypatch):
    from lean.runtime import load
    from lean.serve import TritonConfig, write_triton_repository

    write_triton_repository(onnx_bert, tmp_path / "repo", TritonConfig(name="bbc"))
    version = tmp_path / "repo" / "bbc_tokenizer" / "1"
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_python_backend())
    spec = importlib.util.spec_from_file_location("bbc_tokenizer_model", version / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    triton_model = module.TritonPythonModel()
    triton_model.initialize({"model_repository": str(version.parent), "model_version": "1"})

    texts = [r["text"] for r in bbc_rows(1)] + ["Short one.", "é ✓"]
    requests = [{"TEXT": _FakeTensor("TEXT", np.array([[t.encode()] for t in part], dtype=object))}
                for part in (texts[:3], texts[3:])]
    responses = triton_model.execute(requests)
    assert [r["error"] for r in responses] == [None, None]
    feeds = [{t.name: t.array for t in r["outputs"]} for r in responses]

    runtime = load(onnx_bert, provider="CPUExecutionProvider", threads=1)
    for feed, part in zip(feeds, (texts[:3], texts[3:])):
        expected = runtime.encode(part, pad_to=128)
        assert feed.keys() == expected.keys()
        for name in feed:
            assert feed[name].dtype == np.int64 and feed[name].shape == (len(part), 128)
            np.testing.assert_array_equal(feed[name], expected[name])
        # what Triton's onnxruntime model computes from these inputs is lean.runtime's answer
        np.testing.assert_allclose(runtime.run(feed), runtime.logits(part), atol=1e-5)


def test_cli_writes_the_repository_and_refuses_a_causal_lm_cleanly(onnx_bert, tmp_path):
    result = invoke("serve", f"news={onnx_bert}", "--triton-repository", str(tmp_path / "repo"),
                    "--max-batch-size", "8", "--triton-instances", "2")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and (tmp_path / "repo" / "news" / "config.pbtxt").is_file()
    assert "max_batch_size: 8" in (tmp_path / "repo" / "news_onnx" / "config.pbtxt").read_text()
    again = invoke("serve", f"news={onnx_bert}", "--triton-repository", str(tmp_path / "repo"))
    assert again.returncode == 2 and "already exists" in again.stderr
    bad = invoke("serve", str(onnx_bert), "--triton-repository", str(tmp_path / "r2"), "--triton-kind", "KIND_TPU")
    assert bad.returncode == 2 and "KIND_CPU, KIND_GPU" in bad.stderr and not (tmp_path / "r2").exists()

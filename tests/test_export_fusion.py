"""lean export's fusions and latency check: Attention fused on both exporters, what each level did to the
graph in the manifest, and a warning when the chosen level is slower than the plainer one.

    python -m pytest tests/test_export_fusion.py -x -q        # ~1 min on 2 cores
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import invoke
from export_models import HAS_OPTIMUM, save_named_classifier

LAYERS = 2  # save_named_classifier's tiny BERT


@pytest.fixture(scope="module")
def named_bert(tmp_path_factory) -> Path:
    return save_named_classifier(tmp_path_factory.mktemp("models") / "bert-2")


def _manifest(path: Path) -> dict:
    return json.loads((path / "lean.json").read_text())


def _slower_timer(files, feed, threads):
    """Stands in for latency.time_interleaved: the optimized graph takes twice as long as the plainer one."""
    return {"model": 2.0, "plainer": 1.0}


@pytest.mark.parametrize("exporter", ["torch", "optimum"])
def test_o2_fuses_attention_on_both_exporters_and_records_the_node_counts(exporter, named_bert, tmp_path):
    if exporter == "optimum" and not HAS_OPTIMUM:
        pytest.skip("optimum-onnx is not installed")
    from lean.export import ExportConfig, export
    from lean.export.fusion import attention_count, op_counts

    out = export(str(named_bert), ExportConfig(exporter=exporter, optimize="O2"), str(tmp_path / "o2"))
    onnx = _manifest(out)["onnx"]
    assert attention_count(out / "model.onnx") == LAYERS  # one fused Attention per layer
    counts = op_counts(out / "model.onnx")
    assert counts["SkipLayerNormalization"] == 2 * LAYERS and counts["BiasGelu"] == LAYERS
    assert counts["Softmax"] == 0  # no attention left unfused
    fusion = onnx["fusion"]
    assert fusion["attention_fused"] and fusion["fused"]["Attention"] == LAYERS
    assert fusion["nodes"]["after"] == sum(counts.values()) < fusion["nodes"]["before"]
    assert fusion["changed"]["Softmax"] == [LAYERS, 0]
    assert _manifest(out)["validation"]["max_abs_diff"] <= 1e-4  # fused and still exact
    if exporter == "torch":
        assert onnx["graph"] == "torchscript"  # the graph onnxruntime's Attention pattern matches


def test_torch_exporter_falls_back_to_dynamo_when_tracing_fails(named_bert, tmp_path, monkeypatch):
    from lean.export import ExportConfig, export
    from lean.export import torch_exporter

    def fails(*args, **kwargs):
        raise RuntimeError("tracing failed here\nsecond line")

    monkeypatch.setattr(torch_exporter, "_export_torchscript", fails)
    out = export(str(named_bert), ExportConfig(exporter="torch", optimize="O2", latency_check=False), str(tmp_path / "o2"))
    onnx = _manifest(out)["onnx"]
    assert onnx["graph"] == "dynamo" and onnx["torchscript_failed"] == "tracing failed here"
    assert onnx["fusion"]["fused"]["SkipLayerNormalization"] == 2 * LAYERS and "latency_check" not in onnx


def test_a_slower_level_is_a_warning_in_the_output_and_the_manifest(named_bert, tmp_path, monkeypatch):
    from lean.export import latency

    monkeypatch.setattr(latency, "time_interleaved", _slower_timer)
    out = tmp_path / "o2"
    result = invoke("export", str(named_bert), "-o", str(out), "--exporter", "torch", "--optimize", "O2")
    assert result.returncode == 0, result.stderr
    assert f"fused: Attention {LAYERS}" in result.stdout and "latency: 2.00 ms vs 1.00 ms" in result.stdout
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "--optimize O2 is slower here than fp32 without --optimize O2" in warning[0]
    assert "(0.50x)" in warning[0] and "drop --optimize O2" in warning[0]
    check = _manifest(out)["onnx"]["latency_check"]
    assert check["slower"] and check["speedup"] == 0.5 and check["plainer"] == "fp32 without --optimize O2"
    assert check["batch_size"] == 1 and check["seq_len"] == 128 and check["warning"] in warning[0]


def test_int8_static_is_timed_against_int8_dynamic(named_bert, tmp_path):
    from lean.export import ExportConfig, export

    out = export(str(named_bert), ExportConfig(exporter="torch", quantize="int8-static", calibration_samples=8,
                                               min_agreement=0.0), str(tmp_path / "static"))
    onnx = _manifest(out)["onnx"]
    check = onnx["latency_check"]
    assert check["plainer"] == "int8-dynamic of the same graph" and check["ms"] > 0 and check["plainer_ms"] > 0
    assert check["slower"] == (check["speedup"] < 1.0) and ("warning" in check) == check["slower"]
    # what quantization wrote into the graph: QDQ pairs around the quantized MatMuls
    assert onnx["quantization"]["changed"]["QuantizeLinear"][0] == 0 < onnx["quantization"]["changed"]["QuantizeLinear"][1]


def test_the_plainer_model_of_each_choice():
    from lean.export import ExportConfig
    from lean.export.latency import plainer

    assert plainer(ExportConfig()) is None  # nothing plainer than fp32
    assert plainer(ExportConfig(optimize="O2")) == ("fp32 without --optimize O2", "fp32")
    assert plainer(ExportConfig(quantize="int8-dynamic")) == ("fp32", "fp32")
    assert plainer(ExportConfig(optimize="O2", quantize="int8-dynamic")) == ("int8-dynamic without --optimize O2",
                                                                             "int8-dynamic")
    assert plainer(ExportConfig(quantize="int8-static")) == ("int8-dynamic of the same graph", "int8-dynamic")
    assert plainer(ExportConfig(fp16=True)) is None  # CUDA: compared by lean bench


def test_the_interleaved_timer_times_every_graph(named_bert, tmp_path):
    from lean.export import ExportConfig, export
    from lean.export.latency import time_interleaved
    from lean.runtime import load

    out = export(str(named_bert), ExportConfig(exporter="torch", latency_check=False), str(tmp_path / "fp32"))
    assert "latency_check" not in _manifest(out)["onnx"]
    feed = load(out).encode(["Shares rose after profits beat forecasts"], max_length=32, pad_to=32)
    ms = time_interleaved({"a": out / "model.onnx", "b": out / "model.onnx"}, feed, threads=1, rounds=3, calls=2)
    assert set(ms) == {"a", "b"} and all(0 < v < 1000 for v in ms.values())


def test_cli_no_latency_check_skips_the_timing(named_bert, tmp_path):
    out = tmp_path / "o1"
    result = invoke("export", str(named_bert), "-o", str(out), "--exporter", "torch", "--optimize", "O1",
                    "--no-latency-check")
    assert result.returncode == 0, result.stderr
    assert "fused: nothing" in result.stdout and "latency:" not in result.stdout  # O1 writes no contrib op
    assert "latency_check" not in _manifest(out)["onnx"] and _manifest(out)["onnx"]["fusion"]["fused"] == {}

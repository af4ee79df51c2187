"""Small onnx/onnxruntime helpers both exporters share."""

from __future__ import annotations

from pathlib import Path


def has_vnni() -> bool:
    """VNNI (AVX512-VNNI or AVX-VNNI) multiplies u8 x s8 without the 16-bit intermediate that can saturate."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def session_inputs(file: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"]).get_inputs()


def opset(file: Path) -> int | None:
    import onnx

    model = onnx.load(str(file), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)

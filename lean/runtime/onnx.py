"""An exported ONNX directory (model.onnx + tokenizer.json + config.json): onnxruntime + tokenizers + numpy.

lean.runtime.load returns an OnnxModel for such a directory. Tests: tests/test_runtime.py.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lean.runtime.common import (OnnxModelError, _check_texts, _first_line, _model_max_length, _positions, _softmax,
                                 _special_ids, positive_int_field, read_json_object)

MODEL_FILE = "model.onnx"


def physical_cores() -> int:
    """Physical cores this process may run on: one intra-op thread per core beats one per hyperthread."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    cores, physical, core = set(), None, None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                physical = value.strip()
            elif key == "core id":
                core = value.strip()
            elif not key and core is not None:  # a blank line ends one logical CPU's block
                cores.add((physical, core))
                physical = core = None
        if core is not None:
            cores.add((physical, core))
    except OSError:
        pass
    return max(1, min(allowed, len(cores) or allowed))


def cuda_available() -> bool:
    """True when onnxruntime has its CUDA provider and the machine has a CUDA device (checked via the driver)."""
    import ctypes

    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


class OnnxModel:
    """An ONNX classifier or causal LM with its tokenizer; `kind` is "classification" or "lm"."""

    def __init__(self, path: str | os.PathLike, provider: str | None = None, threads: int | None = None,
                 session_config: dict[str, str] | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        file = self.path / MODEL_FILE
        if not self.path.is_dir():
            raise OnnxModelError(f"'{path}' is not a directory: pass the directory written by lean export")
        if not file.is_file():
            raise OnnxModelError(f"'{path}' has no {MODEL_FILE}: pass a directory written by lean export")
        self._read_records()
        self._read_tokenizer()

        self.provider = provider or ("CUDAExecutionProvider" if cuda_available() else "CPUExecutionProvider")
        if self.provider not in ort.get_available_providers():
            raise OnnxModelError(f"execution provider '{self.provider}' is not available here; available: "
                                 f"{', '.join(ort.get_available_providers())}")
        self.threads = threads or physical_cores()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1  # one request at a time: parallelism lives inside each op
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: keep `lean predict` output clean
        for key, value in (session_config or {}).items():
            options.add_session_config_entry(key, str(value))
        providers = [self.provider] + (["CPUExecutionProvider"] if self.provider != "CPUExecutionProvider" else [])
        try:
            self.session = ort.InferenceSession(str(file), sess_options=options, providers=providers)
        except Exception as e:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
            raise OnnxModelError(f"cannot load '{file}': not a valid ONNX model ({_first_line(e)}); "
                                 "re-run lean export to write it again") from None

        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.kind = "lm" if any(n.startswith("past_key_values") for n in self.input_names) else "classification"
        self._read_labels_and_lengths()

    def _read_records(self) -> None:
        """config.json and lean.json, each a JSON object or an OnnxModelError naming the file."""
        self.config = read_json_object(self.path / "config.json")
        self.manifest = read_json_object(self.path / "lean.json")

    def _read_tokenizer(self) -> None:
        """The directory's fast tokenizer (tokenizer.json), or an OnnxModelError saying what to do."""
        if not (self.path / "tokenizer.json").is_file():
            raise OnnxModelError(f"'{self.path}' has no tokenizer.json (a fast tokenizer is needed): re-run lean export")
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise OnnxModelError(f"cannot read '{self.path}/tokenizer.json': {_first_line(e)}") from None

    def _read_labels_and_lengths(self) -> None:
        """Label names, length limits and special ids from the directory's files, and the tokenizer left
        unpadded and untruncated (the runtime pads and truncates itself): the same for every exported kind."""
        id2label = self.config.get("id2label") or {}
        if not isinstance(id2label, dict):
            raise OnnxModelError(f"'{self.path / 'config.json'}': \"id2label\" must be an object of label names, "
                                 f"got {type(id2label).__name__}: re-run lean export to write it again")
        self.label_names = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(len(id2label))]
        # the longest input the model takes: what it was exported at, never more than its positions
        self.input_limit = _model_max_length(self.path, self.config)
        self.max_length = positive_int_field(self.manifest, "max_length", self.path / "lean.json") or self.input_limit
        # positions the model has: a prompt plus its new tokens must fit (causal LMs)
        self.context_length = _positions(self.path, self.config) or self.max_length
        self.check_max_length(self.max_length, "its lean.json's max_length")
        self.pad_id, self.eos_id = _special_ids(self.path, self.tokenizer, self.config)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, kind={self.kind!r}, provider={self.provider!r}, threads={self.threads})"

    def check_max_length(self, max_length: int, what: str) -> int:
        """`max_length` when the model has positions for it; else OnnxModelError naming both."""
        limit = self.context_length if self.kind == "lm" else self.input_limit
        if max_length > limit:
            raise OnnxModelError(f"{what} {max_length} is above the limit of {limit} tokens this model takes "
                                 f"(its positions): pass at most {limit}")
        return max_length

    # ---- classification ------------------------------------------------------------------------

    def encode(self, texts: Sequence[str], max_length: int | None = None, pad_to: int | None = None,
               padding_side: str = "right", truncation_side: str = "right",
               truncated: list | None = None) -> dict[str, np.ndarray]:
        """Tokenize into the session's int64 inputs (B, T): padded to the longest text, or to `pad_to`.
        Texts over `max_length` tokens lose their end (or, with truncation_side="left", their start);
        pass a list as `truncated` to get back (index, tokens before truncation) of each one cut."""
        texts = _check_texts(texts)
        max_length = self.check_max_length(max_length, "--max-length") if max_length else self.max_length
        # counts the special tokens the post-processor adds
        self.tokenizer.enable_truncation(max_length, direction=truncation_side)
        try:
            encodings = self.tokenizer.encode_batch(list(texts))
        finally:
            self.tokenizer.no_truncation()
        if truncated is not None:
            truncated.extend((i, len(e.ids) + sum(len(o.ids) for o in e.overflowing))
                             for i, e in enumerate(encodings) if e.overflowing)
        length = max(pad_to or 0, max(len(e.ids) for e in encodings))
        ids = np.full((len(texts), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        types = np.zeros((len(texts), length), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            cols = slice(0, n) if padding_side == "right" else slice(length - n, length)
            ids[row, cols], mask[row, cols], types[row, cols] = e.ids, 1, e.type_ids
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: feed[name] for name in self.input_names if name in feed}

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Logits as float32: (B, num_labels) for a classifier, (B, T, vocab) for an LM (first step)."""
        if self.kind == "lm" and not any(n.startswith("past_key_values") for n in feed):
            feed = {**self.lm_inputs(feed["input_ids"], feed["attention_mask"]),
                    **self._empty_past(feed["input_ids"].shape[0])}
        return np.asarray(self.session.run(["logits"], feed)[0], dtype=np.float32)

    def predict(self, texts: Sequence[str], batch_size: int = 32, max_length: int | None = None) -> list[dict[str, Any]]:
        """Labels with softmax scores, one dict per text, in input order."""
        if self.kind != "classification":
            raise OnnxModelError(f"'{self.path}' is a causal LM: use generate(), not predict()")
        logits = self.logits(texts, batch_size=batch_size, max_length=max_length)
        probs = _softmax(logits)
        # the model's own id2label names; generic LABEL_i only for outputs it does not name
        names = [self.label_names[i] if i < len(self.label_names) else f"LABEL_{i}" for i in range(probs.shape[1])]
        return [{"label": names[int(p.argmax())], "score": float(p.max()),
                 "scores": {names[i]: float(v) for i, v in enumerate(p)}} for p in probs]

    def logits(self, texts: Sequence[str], batch_size: int = 32, max_length: int | None = None) -> np.ndarray:
        """(N, num_labels) logits; texts are batched by length so padding stays small, then put back in order."""
        texts = _check_texts(texts)
        if batch_size < 1:
            raise OnnxModelError(f"batch size must be at least 1, got {batch_size}")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            for i, row in zip(idx, self.run(self.encode([texts[i] for i in idx], max_length=max_length))):
                out[i] = row
        return np.stack(out)

    # ---- causal LM ------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32, batch_size: int = 8,
                 max_length: int | None = None, stats: dict | None = None) -> list[str]:
        """Greedy continuations (the text after each prompt, up to EOS), reusing the KV cache at each step.

        Pass a dict as `stats` to get timings back: prefill_s (prompt and first token), decode_s,
        new_tokens (generated after the first, summed over the batch) and steps.
        """
        ids = self.generate_ids(prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                max_length=max_length, stats=stats)
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in ids]

    def generate_ids(self, prompts: Sequence[str], max_new_tokens: int = 32, batch_size: int = 8,
                     max_length: int | None = None, stats: dict | None = None) -> list[list[int]]:
        """Greedy new token ids per prompt (EOS excluded); prompts are left-padded in batches.

        A prompt must leave room for its new tokens in the model's context: one longer than
        min(max_length, context - max_new_tokens) tokens keeps its last tokens (the ones the next token
        depends on most) and a warning says so.
        """
        if self.kind != "lm":
            raise OnnxModelError(f"'{self.path}' is a classifier: use predict(), not generate()")
        prompts = _check_texts(prompts)
        if max_new_tokens < 1:
            raise OnnxModelError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        room = self.context_length - max_new_tokens
        if room < 1:
            raise OnnxModelError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's "
                                 f"context of {self.context_length} tokens: lower it")
        limit = min(self.check_max_length(max_length, "--max-length") if max_length else room, room)
        out: list[list[int]] = []
        for start in range(0, len(prompts), batch_size):
            cut: list[tuple[int, int]] = []
            feed = self.encode(prompts[start:start + batch_size], max_length=limit, padding_side="left",
                               truncation_side="left", truncated=cut)
            for i, n in cut:
                warnings.warn(f"prompt {start + i + 1} has {n} tokens; kept its last {limit} (the model's context "
                              f"is {self.context_length} tokens, {max_new_tokens} of them for new tokens)", stacklevel=2)
            out.extend(self.greedy(feed["input_ids"], feed["attention_mask"], max_new_tokens, stats))
        return out

    def greedy(self, input_ids: np.ndarray, mask: np.ndarray, max_new_tokens: int, stats: dict | None) -> list[list[int]]:
        """Greedy new ids per row of token ids (EOS excluded), with the KV cache; `stats` gains prefill_s,
        decode_s, new_tokens (after the first, summed over the batch) and steps."""
        batch = input_ids.shape[0]
        past = self._empty_past(batch)
        new = np.zeros((batch, 0), dtype=np.int64)
        done = np.zeros(batch, dtype=bool)
        tokens = input_ids
        t0 = time.perf_counter()
        t_first = None
        for step in range(max_new_tokens):
            feed = {**self.lm_inputs(tokens, mask), **past}
            outputs = self.session.run(None, feed)
            logits = outputs[self.output_names.index("logits")]  # (B, T, vocab): only the last position matters
            next_ids = logits[:, -1, :].argmax(-1).astype(np.int64)
            if self.eos_id is not None:
                next_ids = np.where(done, self.eos_id, next_ids)
                done |= next_ids == self.eos_id
            new = np.concatenate([new, next_ids[:, None]], axis=1)
            if t_first is None:
                t_first = time.perf_counter()
            if done.all() or step == max_new_tokens - 1:
                break
            # present.N.key -> past_key_values.N.key: (B, kv_heads, past + T, head_dim)
            past = {name.replace("present", "past_key_values"): value
                    for name, value in zip(self.output_names, outputs) if name.startswith("present")}
            tokens = next_ids[:, None]
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        if stats is not None:
            end = time.perf_counter()
            stats["prefill_s"] = stats.get("prefill_s", 0.0) + (t_first - t0)
            stats["decode_s"] = stats.get("decode_s", 0.0) + (end - t_first)
            stats["new_tokens"] = stats.get("new_tokens", 0) + batch * (new.shape[1] - 1)
            stats["steps"] = stats.get("steps", 0) + new.shape[1]
        result = []
        for row in new.tolist():
            if self.eos_id is not None and self.eos_id in row:
                row = row[:row.index(self.eos_id)]
            result.append(row)
        return result

    _greedy = greedy  # the earlier private name

    def lm_inputs(self, tokens: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """input_ids (B, T), attention_mask (B, past + T) and, where the graph takes them, position_ids (B, T)."""
        feed = {"input_ids": tokens, "attention_mask": mask}
        if "position_ids" in self.input_names:
            # positions count real tokens only, so left padding does not shift them (as transformers does)
            positions = np.cumsum(mask, axis=1) - 1
            positions[mask == 0] = 1
            feed["position_ids"] = positions[:, -tokens.shape[1]:].astype(np.int64)
        return feed

    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """Zero-length KV cache for the first step: (B, kv_heads, 0, head_dim) per layer, key and value."""
        past = {}
        for i in self.session.get_inputs():
            if i.name.startswith("past_key_values"):
                dtype = np.float16 if "float16" in i.type else np.float32
                past[i.name] = np.zeros((batch, i.shape[1], 0, i.shape[3]), dtype=dtype)
        return past

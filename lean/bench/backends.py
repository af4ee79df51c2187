"""Backends: one loaded variant behind the interface every scenario (quality, latency, LM) uses.

    backend = BACKENDS["torch"](model_dir, spec, task)
    backend.logits(texts, max_length=128, batch_size=32)       # (N, num_labels)
    backend.forward(backend.prepare(texts, seq_length=128))    # one timed call's work

Child side of lean.bench (runs in the measuring subprocess). A backend names the libraries its
subprocess imports before anything is loaded (`preload`), so a row's memory holds its own runtime
only. Causal LMs add token ids, EOS, a greedy step and perplexity to the same interface, so the LM
scenario needs no backend's internals. The classical backend lives with its kind (lean.bench.classical).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx_data", ".data", ".bin", ".pt", ".pth")


def weights_bytes(path: str | Path) -> int:
    """Bytes of weight files at the top of a model directory (not tokenizer or config files)."""
    path = Path(path)
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


class Backend:
    """The interface every loaded variant offers to the measuring code."""

    preload: tuple[str, ...] = ()  # modules the subprocess imports before its bare RSS is taken
    label_names: list[str] = []
    max_positions: int | None = None  # longest sequence the model takes (None: no limit)
    device = "cpu"
    truncates = True  # scored on texts cut to max_length (a linear model takes whole texts)
    runtime = ""  # the LM generation loop, as results.json names it
    note: str | None = None  # what results.json should say about how it was loaded

    def logits(self, texts: list[str], max_length: int, batch_size: int):  # (N, num_labels) numpy
        raise NotImplementedError

    def prepare(self, texts: list[str], seq_length: int):  # inputs of exactly (B, seq_length)
        raise NotImplementedError

    def forward(self, inputs) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        pass

    def size(self) -> dict[str, Any]:
        raise NotImplementedError

    # causal LMs
    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens, from the variant's own tokenizer."""
        raise NotImplementedError(f"{type(self).__name__} is not a causal LM")

    @property
    def eos_id(self) -> int | None:
        return None

    def greedy(self, prompts: list[list[int]], new_tokens: int) -> tuple[list[list[int]], float, float, int]:
        """One greedy round: (new ids per prompt, EOS cut; seconds to the first new token; seconds of the
        tokens after it; tokens decoded after the first, summed over the batch)."""
        raise NotImplementedError(f"{type(self).__name__} is not a causal LM")

    def perplexity(self, texts: list[str], window: int, stride: int, max_tokens: int | None,
                   batch_size: int) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} is not a causal LM")

    def reset_peak_memory(self) -> None:
        pass

    def device_peak_mb(self) -> float | None:
        """Peak allocated accelerator memory since the last reset; None on a CPU."""
        return None

    def device_allocated_mb(self) -> float | None:
        return None


def _strip(row: list[int], eos: int | None) -> list[int]:
    return row[:row.index(eos)] if eos is not None and eos in row else row


class _Clock:
    """A transformers streamer that only notes the time of each put: the prompt, then every new token."""

    def __init__(self, sync):
        self.sync, self.times = sync, []

    def put(self, value) -> None:
        self.sync()
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


class TorchBackend(Backend):
    preload = ("torch", "transformers")
    runtime = "transformers generate"

    def __init__(self, path: str, spec: dict[str, Any], task=None):
        import torch

        from lean.models import align_pad_token, load_tokenizer, read_manifest

        load = spec.get("load") or {}
        trust = bool(spec.get("trust_remote_code"))  # only ever set by `lean bench --trust-remote-code`
        self.device = spec["device"]
        self.path = path
        if read_manifest(path).get("step") == "quantize":
            from lean.quantize import load_quantized

            self.model = load_quantized(path, self.device)
            if load.get("dtype") or load.get("attention"):
                self.note = "load.dtype/attention do not apply to a quantized directory (ignored)"
        else:
            from lean.models import load_model

            kwargs: dict[str, Any] = {}
            if load.get("dtype"):
                kwargs["dtype"] = getattr(torch, load["dtype"])
            if load.get("attention") in ("eager", "sdpa"):
                kwargs["attn_implementation"] = load["attention"]
            kind = "lm" if spec.get("task_kind") == "lm" else "classification"
            self.model = load_model(path, kind, trust, **kwargs)
            self.model.to(self.device)
        if load.get("attention") == "lean":
            from lean.attention import use_lean_attention

            self.model = use_lean_attention(self.model)
        self.model.eval()
        self.tokenizer = load_tokenizer(path, trust)
        align_pad_token(self.model, self.tokenizer)
        config = self.model.config
        self.label_names = [config.id2label[i] for i in range(len(config.id2label))] if config.id2label else []
        self.max_positions = getattr(config, "max_position_embeddings", None)
        on_cpu = self.device == "cpu"
        self.input_device = next(iter(self.model.parameters())).device if on_cpu else torch.device(self.device)
        self.torch = torch

    def _encode(self, texts, max_length, pad_to=None):
        padding = "max_length" if pad_to else True
        from lean.metrics import forward_inputs

        enc = self.tokenizer(list(texts), truncation=True, max_length=pad_to or max_length, padding=padding,
                             return_tensors="pt")
        return {k: v.to(self.input_device) for k, v in forward_inputs(self.model, enc).items()}

    def logits(self, texts, max_length, batch_size):
        import numpy as np

        out = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch together: less padding
        with self.torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                rows = self.model(**self._encode([texts[i] for i in idx], max_length)).logits.float().cpu().numpy()
                for i, row in zip(idx, rows):
                    out[i] = row
        return np.stack(out)

    def prepare(self, texts, seq_length):
        return self._encode(texts, seq_length, pad_to=seq_length)

    def forward(self, inputs):
        with self.torch.inference_mode():
            self.model(**inputs)

    def sync(self):
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def size(self):
        return {"params": count_torch_params(self.model), "weights_bytes": weights_bytes(self.path)}

    def token_ids(self, texts):
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    @property
    def eos_id(self):
        return self.tokenizer.eos_token_id

    def greedy(self, prompts, new_tokens):
        """One greedy `generate` call, the time of each new token noted by a streamer."""
        torch = self.torch
        ids = torch.tensor(prompts, device=self.input_device)
        eos = self.eos_id
        clock = _Clock(self.sync)
        with torch.inference_mode():
            self.sync()
            t0 = time.perf_counter()
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                      do_sample=False, num_beams=1, pad_token_id=eos, streamer=clock)
        steps = out.shape[1] - ids.shape[1]
        # clock.times: [prompt, token 1, ..., token steps]
        ttft, decode = clock.times[1] - t0, clock.times[-1] - clock.times[1]
        rows = [_strip(r, eos) for r in out[:, ids.shape[1]:].tolist()]
        return rows, ttft, decode, (steps - 1) * len(prompts)

    def perplexity(self, texts, window, stride, max_tokens, batch_size):
        from lean.lm import perplexity

        return perplexity(self.model, self.tokenizer, texts, window=window, stride=stride, max_tokens=max_tokens,
                          batch_size=batch_size)

    def _cuda(self) -> bool:
        return str(self.device).startswith("cuda")

    def reset_peak_memory(self):
        if self._cuda():
            self.torch.cuda.reset_peak_memory_stats()

    def device_peak_mb(self):
        return round(self.torch.cuda.max_memory_allocated() / 2**20, 1) if self._cuda() else None

    def device_allocated_mb(self):
        return round(self.torch.cuda.memory_allocated() / 2**20, 1) if self._cuda() else None


def count_torch_params(model) -> int:
    """Parameters as the unquantized model had them: 4-bit packed tensors count their logical shape."""
    import math

    total = 0
    for p in model.parameters():
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
        total += math.prod(shape) if shape is not None else p.numel()
    for m in model.modules():
        if hasattr(m, "_packed_params") and callable(getattr(m, "weight", None)):  # torch.ao dynamic int8 Linear
            total += m.weight().numel() + (m.bias().numel() if m.bias() is not None else 0)
    return int(total)


class OnnxBackend(Backend):
    preload = ("onnx", "onnxruntime")
    runtime = "onnxruntime (KV cache)"

    def __init__(self, path: str, spec: dict[str, Any], task=None):
        from lean.runtime import load

        self.path = path
        self.device = spec["device"]
        provider = (spec.get("load") or {}).get("provider") or (
            "CUDAExecutionProvider" if self.device.startswith("cuda") else "CPUExecutionProvider")
        self.model = load(path, provider=provider, threads=spec["threads"])
        self.label_names = list(self.model.label_names)
        self.max_positions = self.model.config.get("max_position_embeddings")

    def logits(self, texts, max_length, batch_size):
        return self.model.logits(texts, batch_size=batch_size, max_length=max_length)

    def prepare(self, texts, seq_length):
        return self.model.encode(texts, max_length=seq_length, pad_to=seq_length)

    def forward(self, inputs):
        self.model.run(inputs)

    def size(self):
        import math

        import onnx

        graph = onnx.load(str(Path(self.path) / "model.onnx"), load_external_data=False).graph
        params = sum(math.prod(t.dims) for t in graph.initializer if t.data_type in (1, 10, 16))  # float, fp16, bf16
        quantized = sum(math.prod(t.dims) for t in graph.initializer if t.data_type in (2, 3))  # uint8/int8 weights
        return {"params": int(params + quantized), "weights_bytes": weights_bytes(self.path)}

    def token_ids(self, texts):
        return [e.ids for e in self.model.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    @property
    def eos_id(self):
        return self.model.eos_id

    def greedy(self, prompts, new_tokens):
        """One greedy KV-cache loop of lean.runtime (the loop OnnxModel.generate runs) on token ids."""
        import numpy as np

        ids = np.asarray(prompts, dtype=np.int64)
        stats: dict[str, Any] = {}
        rows = self.model.greedy(ids, np.ones_like(ids), new_tokens, stats)
        return rows, stats["prefill_s"], stats["decode_s"], stats["new_tokens"]

    def perplexity(self, texts, window, stride, max_tokens, batch_size):
        from lean.lm import join_ids, onnx_perplexity

        stream = join_ids(self.token_ids(texts), self.eos_id, max_tokens)
        return onnx_perplexity(self.model, stream, window, stride, batch_size)


def model_backend(path: str | Path) -> str:
    """Which backend loads a built model directory: "onnx" for an ONNX one, else "torch"."""
    from lean.models import is_onnx_dir

    return "onnx" if is_onnx_dir(path) and (Path(path) / "model.onnx").is_file() else "torch"

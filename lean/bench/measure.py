"""What runs inside one variant's measuring subprocess: load, quality, latency, memory.

    python -m lean.bench.measure SPEC.json RESULT.json [--wait torch|onnx|tfidf-logreg TASK.json]

The harness (lean.bench.runner) starts one fresh interpreter per variant, so peak memory belongs
to that variant alone and a crash marks one row. SPEC.json says what to load and how to measure
(see `measure`); RESULT.json is rewritten after every phase, so a variant killed by the timeout
still leaves the figures it finished. Lines starting with "@phase " on stdout tell the parent
what is happening. With --wait the process imports that backend's libraries, loads the task
(TASK.json) and waits for "go" on stdin before it reads SPEC.json: the harness starts the next
variant's subprocess this way while the current one is scored, so the imports overlap.

Honest measuring (docs/bench.md): inputs are the task's real test texts, tokenized once; latency is
taken after warm-up, synchronised on CUDA, with a fixed thread count; memory is the subprocess's
peak RSS (CPU) or max_memory_allocated (CUDA), beside the RSS of the same interpreter right after
its imports, before any model or data.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx_data", ".data", ".bin", ".pt", ".pth")
MAX_DISTINCT_BATCHES = 8  # latency cycles through this many different real batches per cell


def phase(text: str) -> None:
    print(f"@phase {text}", flush=True)


def rss_peak_mb() -> float:
    """This process's peak RSS. On Linux the high-water mark of its own memory (VmHWM): ru_maxrss also
    counts the parent's RSS at the fork before the exec (a TF-IDF row spawned by a 380 MB harness
    reported a 380 MB peak whose process never went over 266 MB). Elsewhere ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except (OSError, ValueError, IndexError):
        pass
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1)


def rss_now_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return rss_peak_mb()


def weights_bytes(path: str | Path) -> int:
    """Bytes of weight files at the top of a model directory (not tokenizer or config files)."""
    path = Path(path)
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


def quantile(values, q: float) -> float:
    """The Harrell-Davis estimate of the q-quantile: a weighted mean of every sorted value, the weights
    from the Beta((n+1)q, (n+1)(1-q)) distribution. With a few dozen timed calls the middle sample jumps
    when a call moves from one side to the other; on a cell whose calls fall in two groups (a VM's fast
    and slow states, 250 and 290 ms) the sample median of 11 calls moved 12% between two runs, the
    Harrell-Davis median far less (docs/bench.md). One value: that value."""
    import numpy as np
    from scipy.special import betainc

    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    if n == 1:
        return float(x[0])
    a, b = (n + 1) * q, (n + 1) * (1 - q)
    weights = np.diff(betainc(a, b, np.arange(n + 1) / n))
    return float(weights @ x)


def percentiles(times_s: list[float]) -> dict[str, Any]:
    """A cell's figures from its timed calls (seconds): median, p90 and p99 (Harrell-Davis, see
    `quantile`), mean, min, max (ms) and count."""
    import numpy as np

    ms = np.asarray(times_s) * 1000.0
    return {"median_ms": round(quantile(ms, 0.5), 4), "p90_ms": round(quantile(ms, 0.9), 4),
            "p99_ms": round(quantile(ms, 0.99), 4), "mean_ms": round(float(ms.mean()), 4),
            "min_ms": round(float(ms.min()), 4), "max_ms": round(float(ms.max()), 4), "count": int(ms.size)}


# ---- backends: one per kind of directory -------------------------------------------------------------

class Backend:
    """The interface every loaded variant offers to the measuring code."""

    label_names: list[str] = []
    max_positions: int | None = None  # longest sequence the model takes (None: no limit)
    device = "cpu"

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


class TorchBackend(Backend):
    def __init__(self, path: str, spec: dict[str, Any]):
        import torch

        from lean.models import load_tokenizer, read_manifest

        load = spec.get("load") or {}
        self.device = spec["device"]
        self.path = path
        manifest = read_manifest(path)
        if manifest.get("step") == "quantize":
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
            self.model = load_model(path, "lm" if spec.get("task_kind") == "lm" else "classification", **kwargs)
            self.model.to(self.device)
        if load.get("attention") == "lean":
            from lean.attention import use_lean_attention

            self.model = use_lean_attention(self.model)
        self.model.eval()
        self.tokenizer = load_tokenizer(path)
        config = self.model.config
        self.label_names = [config.id2label[i] for i in range(len(config.id2label))] if config.id2label else []
        self.max_positions = getattr(config, "max_position_embeddings", None)
        self.input_device = next(iter(self.model.parameters())).device if self.device == "cpu" else torch.device(self.device)
        self._torch = torch

    def _encode(self, texts, max_length, pad_to=None):
        padding = "max_length" if pad_to else True
        enc = self.tokenizer(list(texts), truncation=True, max_length=pad_to or max_length, padding=padding,
                             return_tensors="pt")
        return {k: v.to(self.input_device) for k, v in enc.items()}

    def logits(self, texts, max_length, batch_size):
        import numpy as np

        torch = self._torch
        out = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch together: less padding
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                rows = self.model(**self._encode([texts[i] for i in idx], max_length)).logits.float().cpu().numpy()
                for i, row in zip(idx, rows):
                    out[i] = row
        return np.stack(out)

    def prepare(self, texts, seq_length):
        return self._encode(texts, seq_length, pad_to=seq_length)

    def forward(self, inputs):
        with self._torch.inference_mode():
            self.model(**inputs)

    def sync(self):
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize()

    def size(self):
        return {"params": count_torch_params(self.model), "weights_bytes": weights_bytes(self.path)}


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
    def __init__(self, path: str, spec: dict[str, Any]):
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


class ClassicalBackend(Backend):
    """tfidf-logreg: the pipeline the harness fitted on the train split (lean.bench.classical), timed on the
    same truncated texts as the transformers."""

    def __init__(self, path: str, spec: dict[str, Any], task):
        from lean.bench.classical import load_tfidf_logreg

        self.path = path
        self.model, manifest = load_tfidf_logreg(path)
        self.fit_s = manifest.get("fit_s")
        self.label_names = list(task.label_names)
        if manifest.get("labels") not in (None, self.label_names):
            raise ValueError(f"'{path}' was fitted on labels {manifest['labels']}, the task has {self.label_names}")
        # latency texts are cut at the token counts the transformers see, with the tokenizers library
        # alone (transformers would import torch: 3 s and 400 MB that serving a linear model never pays)
        self.tokenizer = fast_tokenizer(spec.get("tokenizer_dir"))

    def logits(self, texts, max_length, batch_size):
        import numpy as np

        # full articles: a linear model has no length limit. In batches like the transformers (all 445
        # test articles in one call took 150 MB more at its peak). Columns follow classes_ (a class absent
        # from a tiny train split has no column), so place them by class index.
        out = np.full((len(texts), len(self.label_names)), -np.inf, dtype=np.float64)
        for start in range(0, len(texts), batch_size):
            out[start:start + batch_size, self.model.classes_] = \
                self.model.predict_log_proba(list(texts[start:start + batch_size]))
        return out

    def prepare(self, texts, seq_length):
        if self.tokenizer is None:
            return [" ".join(t.split()[:seq_length]) for t in texts]
        self.tokenizer.enable_truncation(max_length=seq_length)
        encodings = self.tokenizer.encode_batch(list(texts))
        return [t[:max((end for _, end in e.offsets), default=0)] for t, e in zip(texts, encodings)]

    def forward(self, inputs):
        self.model.predict_proba(inputs)

    def size(self):
        from lean.bench.classical import VOCABULARY, WEIGHTS, parameter_count

        return {"params": parameter_count(self.model), "fit_s": self.fit_s,
                "weights_bytes": sum(Path(self.path, f).stat().st_size for f in (VOCABULARY, WEIGHTS))}


def load_backend(spec: dict[str, Any], task) -> Backend:
    if spec["kind"] == "tfidf-logreg":
        return ClassicalBackend(spec["model_dir"], spec, task)
    from lean.models import is_onnx_dir

    path = spec["model_dir"]
    if is_onnx_dir(path) and (Path(path) / "model.onnx").is_file():
        return OnnxBackend(path, spec)
    return TorchBackend(path, spec)


# ---- inputs for latency ---------------------------------------------------------------------------------

def fast_tokenizer(tokenizer_dir: str | None):
    """The directory's tokenizer.json with the tokenizers library alone (no transformers, so no torch),
    neither truncating nor padding; None without one."""
    if not tokenizer_dir or not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def token_lengths(texts: list[str], tokenizer_dir: str | None) -> list[int] | None:
    """Token counts (with special tokens) of every text, from the directory's tokenizer.json."""
    tok = fast_tokenizer(tokenizer_dir)
    return None if tok is None else [len(e.ids) for e in tok.encode_batch(texts)]


def latency_texts(texts: list[str], lengths: list[int] | None, batch_size: int, seq_length: int,
                  n_batches: int) -> tuple[list[list[str]], dict[str, Any]]:
    """Real test texts for `n_batches` batches of `batch_size`, taken (in test-split order, cycling) from
    the texts at least `seq_length` tokens long, so truncation alone makes every row exactly that long."""
    pool = list(range(len(texts))) if lengths is None else [i for i, n in enumerate(lengths) if n >= seq_length]
    how = "truncated to the length; texts at least that long"
    if not pool:  # no text is long enough: pad (recorded, so the reader knows part of the work is padding)
        pool, how = list(range(len(texts))), "padded to the length (no test text is that long)"
    elif lengths is None:
        how = "truncated or padded to the length (token counts unknown)"
    batches = [[texts[pool[(j * batch_size + k) % len(pool)]] for k in range(batch_size)] for j in range(n_batches)]
    return batches, {"how": how, "pool": len(pool), "of": len(texts), "distinct_batches": n_batches}


WARM_AFTER_ONE_S = 0.1  # a call this slow leaves its cell warm: allocation and kernel choice are done once


def warm_up(forward: Callable[[Any], None], sync: Callable[[], None], batches: list, warmup: int,
            max_cell_s: float | None) -> int:
    """`warmup` untimed calls (fewer once they take max_cell_s / 2 seconds, one at least; one when a call
    takes WARM_AFTER_ONE_S or more); -> calls made."""
    start, warmed = time.perf_counter(), 0
    for w in range(warmup):
        call_start = time.perf_counter()
        forward(batches[w % len(batches)])
        sync()
        warmed += 1
        now = time.perf_counter()
        if now - call_start >= WARM_AFTER_ONE_S or (max_cell_s is not None and now - start >= max_cell_s / 2):
            break
    return warmed


def timed_call(forward: Callable[[Any], None], sync: Callable[[], None], batch) -> float:
    """Seconds for one call, the device synchronised before the clock is read."""
    start = time.perf_counter()
    forward(batch)
    sync()
    return time.perf_counter() - start


def time_cell(forward: Callable[[Any], None], sync: Callable[[], None], batches: list, warmup: int, repeats: int,
              min_repeats: int, max_cell_s: float | None) -> tuple[list[float], int]:
    """Seconds per call, after warm-up (see warm_up), up to `repeats` calls, stopping once they sum to
    `max_cell_s` (but never before `min_repeats`)."""
    warmed = warm_up(forward, sync, batches, warmup, max_cell_s)
    times: list[float] = []
    for r in range(repeats):
        times.append(timed_call(forward, sync, batches[r % len(batches)]))
        if max_cell_s is not None and sum(times) >= max_cell_s and len(times) >= min_repeats:
            break
    return times, warmed


def prepare_cells(backend: Backend, test, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (batch, length) cell of the grid with its real input batches, tokenized once (outside any
    timed region); a cell longer than the model takes is marked skipped."""
    lengths = token_lengths(list(test.texts), spec.get("tokenizer_dir") or spec.get("model_dir"))
    cells = []
    for batch_size in spec["batch_sizes"]:
        for seq_length in spec["seq_lengths"]:
            cell: dict[str, Any] = {"batch_size": batch_size, "seq_length": seq_length}
            entry: dict[str, Any] = {"cell": cell, "times": [], "warmed": None}
            if backend.max_positions and seq_length > backend.max_positions:
                cell["skipped"] = f"the model takes at most {backend.max_positions} tokens"
            else:
                n_batches = max(1, min(MAX_DISTINCT_BATCHES, spec["warmup"] + spec["repeats"]))
                texts, entry["inputs"] = latency_texts(list(test.texts), lengths, batch_size, seq_length, n_batches)
                entry["batches"] = [backend.prepare(b, seq_length) for b in texts]
            cells.append(entry)
    return cells


def finish_cell(entry: dict[str, Any]) -> dict[str, Any]:
    """The cell's figures from its timed calls."""
    cell = entry["cell"]
    if "skipped" in cell or not entry["times"]:
        return cell
    cell.update(percentiles(entry["times"]))
    cell["warmup"] = entry["warmed"]
    cell["throughput_sps"] = round(cell["batch_size"] / (cell["median_ms"] / 1000.0), 3)
    cell["inputs"] = entry["inputs"]
    return cell


def serve_latency(backend: Backend, cells: list[dict[str, Any]], spec: dict[str, Any], lines) -> None:
    """Interleaved timing: answer the harness's requests until it says "end".

    "time B S K [U]" -> U untimed calls (default 0), then K timed calls of the (B, S) cell (warmed up
    on its first request), answered "@times B S t1,t2,..." in seconds, or "@times B S -" for a cell
    this variant does not measure.
    The harness asks every loaded variant in turn, so a slow spell of a shared machine falls on all
    of them alike instead of on whichever variant happened to be running.
    """
    by_key = {(e["cell"]["batch_size"], e["cell"]["seq_length"]): e for e in cells}
    print("@ready", flush=True)
    for line in lines:
        words = line.split()
        if not words or words[0] == "end":
            break
        batch_size, seq_length, calls = int(words[1]), int(words[2]), int(words[3])
        untimed = int(words[4]) if len(words) > 4 else 0
        entry = by_key.get((batch_size, seq_length))
        if entry is None or "skipped" in entry["cell"]:
            print(f"@times {batch_size} {seq_length} -", flush=True)
            continue
        if entry["warmed"] is None:
            entry["warmed"] = warm_up(backend.forward, backend.sync, entry["batches"], spec["warmup"],
                                      spec.get("max_cell_s"))
        for u in range(untimed):
            backend.forward(entry["batches"][u % len(entry["batches"])])
            backend.sync()
        done, n = len(entry["times"]), len(entry["batches"])  # the timed calls go on through the distinct batches
        new = [timed_call(backend.forward, backend.sync, entry["batches"][(done + i) % n]) for i in range(calls)]
        entry["times"].extend(new)
        print(f"@times {batch_size} {seq_length} " + ",".join(f"{t:.9f}" for t in new), flush=True)


# ---- the measurement ------------------------------------------------------------------------------------

def measure(spec: dict[str, Any], result: dict[str, Any], save: Callable[[], None],
            loaded_task: tuple[dict[str, Any], Any, float] | None = None) -> None:
    """Fill `result` (quality, latency, memory, size) phase by phase, calling `save` after each one.

    spec: kind, model_dir, tokenizer_dir, load {attention, dtype, provider}, device, threads,
    task {spec, text_column, label_column, split_seed}, max_length, eval_batch_size, max_eval_samples,
    batch_sizes, seq_lengths, warmup, repeats, min_repeats, max_cell_s, quality, latency, interleave
    (latency: serve the harness's timing requests on stdin, see serve_latency). loaded_task: (its
    spec, the task, the RSS before it) loaded while the process waited for its turn (wait_for_turn),
    used when the spec names the same task.
    """
    import numpy as np  # noqa: F401  (part of the bare interpreter of every backend)

    threads = int(spec["threads"])
    device = spec["device"]
    phase("importing")
    if spec["kind"] == "tfidf-logreg":
        import sklearn.feature_extraction.text  # noqa: F401
        import sklearn.linear_model  # noqa: F401
    elif (Path(spec["model_dir"]) / "model.onnx").is_file():
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    else:
        import torch
        import transformers  # noqa: F401

        torch.set_num_threads(threads)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
    import lean.data  # noqa: F401  (part of the bare interpreter, here and in wait_for_turn)

    early = loaded_task is not None and loaded_task[0] == spec["task"]
    result["memory"] = {"device": device, "bare_rss_mb": loaded_task[2] if early else rss_now_mb(),
                        # the allocator settings this process started with (measure.reuse_memory sets them)
                        "malloc_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")}}
    result["threads"] = threads

    phase("loading task")
    task = loaded_task[1] if early else load_spec_task(spec["task"])
    test = task.test.take(spec.get("max_eval_samples"))
    spec["task_kind"] = task.kind  # a causal LM loads with its LM head

    phase("loading model")
    start = time.perf_counter()
    backend = load_backend(spec, task)
    backend.sync()
    # started_early: imported and loaded the task while the previous variant was scored (--wait)
    result["timing"] = {"load_s": round(time.perf_counter() - start, 3), "started_early": early}
    result["memory"]["loaded_rss_mb"] = rss_now_mb()
    if device.startswith("cuda") and "torch" in sys.modules:
        import torch

        result["memory"]["cuda_loaded_mb"] = round(torch.cuda.memory_allocated() / 2**20, 1)
    result["size"] = backend.size()
    if getattr(backend, "note", None):
        result["note"] = backend.note
    save()

    if spec.get("quality", True):
        if task.kind not in QUALITY:
            raise ValueError(f"quality for '{task.kind}' tasks is not measured yet: set measure.quality: false")
        phase(f"quality on {len(test)} test texts")
        start = time.perf_counter()
        result["quality"] = QUALITY[task.kind](backend, task, test, spec)
        result["timing"]["quality_s"] = round(time.perf_counter() - start, 3)
        save()

    if task.kind == "lm" and spec.get("generation") is not False:  # TTFT and decode tokens/s (lean.bench.lm)
        from lean.bench.lm import generation

        start = time.perf_counter()
        result["generation"] = generation(backend, test, spec, save)
        result["timing"]["generation_s"] = round(time.perf_counter() - start, 3)
        save()

    if spec.get("latency", True):
        cells = prepare_cells(backend, test, spec)
        start = time.perf_counter()
        if spec.get("interleave"):
            phase("loaded: latency waits for the other variants")
            serve_latency(backend, cells, spec, sys.stdin)
        else:
            for i, entry in enumerate(cells):
                if "skipped" not in entry["cell"]:
                    phase(f"latency batch {entry['cell']['batch_size']} x {entry['cell']['seq_length']} tokens")
                    entry["times"], entry["warmed"] = time_cell(
                        backend.forward, backend.sync, entry["batches"], spec["warmup"], spec["repeats"],
                        spec.get("min_repeats", 1), spec.get("max_cell_s"))
                result["latency"] = [finish_cell(e) for e in cells[:i + 1]]  # a timeout keeps the cells done
                save()
        result["latency"] = [finish_cell(entry) for entry in cells]
        result["timing"]["latency_s"] = round(time.perf_counter() - start, 3)
        save()

    result["memory"]["peak_rss_mb"] = rss_peak_mb()
    result["memory"]["model_rss_mb"] = round(result["memory"]["peak_rss_mb"] - result["memory"]["bare_rss_mb"], 1)
    if device.startswith("cuda") and "torch" in sys.modules:
        import torch

        result["memory"]["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def classification_quality(backend: Backend, task, test, spec: dict[str, Any]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class figures on the test split."""
    from lean.metrics import classification_metrics

    max_length = int(spec["max_length"])
    logits = backend.logits(list(test.texts), max_length, int(spec.get("eval_batch_size", 32)))
    predicted = logits.argmax(-1).tolist()
    mapping = label_mapping(backend.label_names, task.label_names)
    predicted = [mapping[p] if mapping else p for p in predicted]
    quality = classification_metrics(test.labels, predicted, task.label_names)
    quality.update({"max_length": max_length if spec["kind"] == "model" else None, "split": "test",
                    "split_seed": task.split_seed, "labels_matched_by": "name" if mapping else "index"})
    return quality


def lm_quality(backend: Backend, task, test, spec: dict[str, Any]) -> dict[str, Any]:
    """Sliding-window perplexity of the test split (lean.bench.lm)."""
    from lean.bench.lm import lm_quality as quality

    return quality(backend, task, test, spec)


# task kind -> quality function
QUALITY: dict[str, Callable[..., dict[str, Any]]] = {"classification": classification_quality, "lm": lm_quality}


def label_mapping(model_labels: list[str], task_labels: list[str]) -> list[int] | None:
    """Model output index -> task label index, when the model's label names are the task's (any order)."""
    if model_labels and sorted(model_labels) == sorted(task_labels):
        index = {name: i for i, name in enumerate(task_labels)}
        return [index[name] for name in model_labels]
    return None


def classify_error(e: BaseException) -> str:
    """'oom' for out-of-memory errors (CUDA or host), else 'failed'."""
    name = type(e).__name__
    if isinstance(e, MemoryError) or name == "OutOfMemoryError" or "out of memory" in str(e).lower():
        return "oom"
    return "failed"


def error_text(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


# What a subprocess started early (--wait KIND TASK.json) imports while it waits for its turn: the
# libraries of its variant's backend only (an ONNX row's memory must not include torch).
PRELOAD = {"torch": ("torch", "transformers"), "onnx": ("onnx", "onnxruntime"),
           "tfidf-logreg": ("sklearn.feature_extraction.text", "sklearn.linear_model")}


def load_spec_task(t: dict[str, Any]):
    """The task a spec names: {spec, text_column, label_column, split_seed}."""
    from lean.data import load_task

    return load_task(t["spec"], t.get("text_column"), t.get("label_column"), int(t.get("split_seed", 42)))


def wait_for_turn(kind: str, task_file: str, lines) -> tuple[dict[str, Any], Any, float] | None:
    """A subprocess started while the previous variant is still being scored: import `kind`'s libraries
    and load the task (TASK.json: the spec's "task"), seconds of one core that would otherwise come
    after the previous variant; then wait for "go" (the harness wrote the spec). -> (task spec, task,
    RSS after the imports), or None when the harness closed stdin instead (the variant is not measured)."""
    import importlib

    for module in PRELOAD.get(kind, ()):  # what measure() imports before it takes the bare RSS, no more
        importlib.import_module(module)
    import lean.data  # noqa: F401

    bare_rss_mb = rss_now_mb()  # before the task, as measure() takes it
    t = json.loads(Path(task_file).read_text())
    task = load_spec_task(t)
    return (t, task, bare_rss_mb) if lines.readline().strip() == "go" else None


def main(argv: list[str] | None = None) -> int:
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started from a background job
    argv = sys.argv[1:] if argv is None else argv
    loaded_task = None
    if len(argv) == 5 and argv[2] == "--wait":
        if argv[3] not in PRELOAD:
            print(f"--wait takes one of {', '.join(PRELOAD)}, got '{argv[3]}'", file=sys.stderr)
            return 2
        loaded_task = wait_for_turn(argv[3], argv[4], sys.stdin)
        if loaded_task is None:
            return 0
        argv = argv[:2]
    if len(argv) != 2:
        print("usage: python -m lean.bench.measure SPEC.json RESULT.json [--wait torch|onnx|tfidf-logreg TASK.json]",
              file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    out = Path(argv[1])
    result: dict[str, Any] = {"status": "running"}

    def save() -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str))
        os.replace(tmp, out)

    try:
        measure(spec, result, save, loaded_task)
        result["status"] = "ok"
    except Exception as e:  # any failure is this variant's row, with its error; the harness goes on
        traceback.print_exc()
        result["status"] = classify_error(e)
        result["error"] = error_text(e)
    save()
    return 0


if __name__ == "__main__":
    code = main()
    # the result is written: skip the interpreter's teardown (freeing a loaded torch or onnxruntime model
    # took about a second per process, and the harness waits for every process to exit)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # the harness has gone
            pass
    os._exit(code)

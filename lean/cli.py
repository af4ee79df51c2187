"""The `lean` command line: one Typer app; each command builds a config and calls the library.

Heavy libraries are imported inside the commands, so `lean --help` is instant and `lean predict`
never loads torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from lean.errors import LeanError, path_error, unknown_home
from lean.bench.reliability import MIN_QUIET_ROUNDS  # a pure module: imports nothing heavy

app = typer.Typer(
    name="lean",
    help="Make transformer models smaller and faster, and prove it with numbers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _not_built(verb: str) -> None:
    typer.echo(f"error: 'lean {verb}' is not built yet in this version", err=True)
    raise typer.Exit(2)


# ---- finetune -------------------------------------------------------------------------------

@app.command()
def finetune(
    model: Optional[str] = typer.Argument(None, help="Base model: a local directory, a Hub id, or a built-in alias (minilm-l6). Omit with --init-config."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory to write the fine-tuned model into."),
    task: Optional[str] = typer.Option(None, help="Task: bbc-news, tweet-sentiment, a .csv/.tsv/.jsonl/.parquet file, a datasets directory, or a Hub dataset id (default: the model's own task from lean.json, else bbc-news)."),
    text_column: Optional[str] = typer.Option(None, help="Text column of a file or dataset task (default: text)."),
    label_column: Optional[str] = typer.Option(None, help="Label column of a file or dataset task (default: label)."),
    epochs: float = typer.Option(3.0, help="Training epochs."),
    lr: float = typer.Option(1e-4, help="Peak learning rate (linear warmup and decay)."),
    batch_size: int = typer.Option(16, help="Training batch size per device."),
    max_length: int = typer.Option(128, help="Truncate texts to this many tokens."),
    seed: int = typer.Option(42, help="Training seed."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the train/validation/test split (default: the parent's when on its task, else 42)."),
    lora: bool = typer.Option(False, "--lora", help="Train a LoRA adapter (merged into the weights before saving)."),
    lora_r: int = typer.Option(8, help="LoRA rank."),
    early_stopping_patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without a better validation accuracy."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    max_train_samples: Optional[int] = typer.Option(None, help="Train on the first N training examples only."),
    max_eval_samples: Optional[int] = typer.Option(None, help="Evaluate on the first N validation and test examples only (quick runs; reported metrics then cover a slice)."),
    task_kind: str = typer.Option("auto", help="classification, lm, or auto (lm for bbc-news-lm and .txt corpora)."),
    init_config: Optional[str] = typer.Option(None, help="Train a causal LM from scratch from a small config (llama-tiny, llama-small, llama-base, gpt2-small) with a tokenizer learnt from the train split."),
    vocab_size: int = typer.Option(8192, help="Vocabulary of the tokenizer learnt with --init-config."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the model's repository."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output directory."),
):
    """Fine-tune a base model into a teacher: a classifier, or a causal LM (from a model or from scratch)."""
    from lean.finetune import FinetuneConfig
    from lean.finetune import finetune as run_finetune
    from lean.steps import check_output_dir

    check_output_dir(output, overwrite, model, [task])
    if model is None and init_config is None:
        raise LeanError("give a MODEL to fine-tune, or --init-config NAME to train a causal LM from scratch")
    config = FinetuneConfig(task=task, text_column=text_column, label_column=label_column, epochs=epochs, lr=lr,
                            batch_size=batch_size, max_length=max_length, seed=seed, split_seed=split_seed, lora=lora,
                            lora_r=lora_r, early_stopping_patience=early_stopping_patience, device=device,
                            max_train_samples=max_train_samples, max_eval_samples=max_eval_samples,
                            trust_remote_code=trust_remote_code, task_kind=task_kind, init_config=init_config, vocab_size=vocab_size)
    out = run_finetune(model, config, str(output), overwrite=overwrite)
    from lean.models import read_manifest

    test = read_manifest(out).get("metrics", {}).get("test", {})
    if "perplexity" in test:
        typer.echo(f"wrote {out}  test perplexity {test['perplexity']:.3f} over {test['tokens']} tokens")
    else:
        typer.echo(f"wrote {out}  test accuracy {test.get('accuracy', float('nan')):.4f}  macro-F1 {test.get('macro_f1', float('nan')):.4f}")


# ---- distill --------------------------------------------------------------------------------

@app.command()
def distill(
    teacher: str = typer.Option(..., "--teacher", help="Teacher model directory (a fine-tuned classifier or a causal LM)."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory to write the student into."),
    student_layers: Optional[int] = typer.Option(None, help="Student = the teacher with N of its layers (evenly spaced, ending at the top one)."),
    layer_map: Optional[str] = typer.Option(None, help="Teacher layers the student copies (or, with --student/--student-config, learns from), e.g. 0,2,4."),
    student: Optional[str] = typer.Option(None, help="Student = an existing model directory (or Hub id) with the teacher's tokenizer."),
    student_config: Optional[List[str]] = typer.Option(None, help="Student = the teacher's config with key=value changes, randomly initialised (repeat or comma-separate)."),
    task: Optional[str] = typer.Option(None, help="Task (as in lean finetune); default: the task in the teacher's lean.json."),
    text_column: Optional[str] = typer.Option(None, help="Text column of a file or dataset task."),
    label_column: Optional[str] = typer.Option(None, help="Label column of a file or dataset task."),
    kind: str = typer.Option("auto", help="classification, lm, or auto (follow the teacher's head)."),
    epochs: float = typer.Option(2.0, help="Training epochs."),
    lr: float = typer.Option(2e-4, help="Peak learning rate (linear warmup and decay)."),
    batch_size: int = typer.Option(16, help="Training batch size per device."),
    grad_accum: int = typer.Option(1, help="Gradient accumulation steps."),
    max_length: Optional[int] = typer.Option(None, help="Truncate texts to this many tokens (default: the teacher's, else 128)."),
    seed: int = typer.Option(42, help="Training seed."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the train/validation/test split (default: the parent's when on its task, else 42)."),
    temperature: float = typer.Option(2.0, help="Softmax temperature of the soft targets (the KL is scaled by T^2)."),
    alpha: float = typer.Option(0.5, help="Weight of the soft-target loss; 1 - alpha weighs the hard-label loss."),
    hidden_weight: float = typer.Option(0.0, help="Weight of the hidden-state MSE over the layer map (TinyBERT)."),
    attention_weight: float = typer.Option(0.0, help="Weight of the attention-distribution KL over the layer map (MiniLM)."),
    cache_teacher: bool = typer.Option(False, "--cache-teacher", help="Compute the teacher's logits once and reuse them every epoch (logit loss only)."),
    early_stopping_patience: Optional[int] = typer.Option(None, help="Stop after this many evaluations without a better validation metric."),
    save_steps: Optional[int] = typer.Option(None, help="Checkpoint and evaluate every N steps (default: every epoch)."),
    checkpoint_dir: Optional[Path] = typer.Option(None, help="Where checkpoints live until the student is written (default: OUTPUT.checkpoints)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint of an interrupted run with the same options."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    max_train_samples: Optional[int] = typer.Option(None, help="Train on the first N training examples only."),
    max_eval_samples: Optional[int] = typer.Option(None, help="Evaluate on the first N validation and test examples only."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the model's repository."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output directory."),
):
    """Distill a teacher into a smaller student (soft targets, hidden states, attention)."""
    from lean.distill import DistillConfig
    from lean.distill import distill as run_distill
    from lean.steps import check_output_dir

    check_output_dir(output, overwrite, teacher, [task, student])
    config = DistillConfig(task=task, text_column=text_column, label_column=label_column, kind=kind,
                           student_layers=student_layers, layer_map=layer_map, student=student,
                           student_config=student_config or None, epochs=epochs, lr=lr, batch_size=batch_size,
                           grad_accum=grad_accum, max_length=max_length, seed=seed, split_seed=split_seed,
                           temperature=temperature, alpha=alpha, hidden_weight=hidden_weight,
                           attention_weight=attention_weight, cache_teacher=cache_teacher,
                           early_stopping_patience=early_stopping_patience, save_steps=save_steps,
                           checkpoint_dir=str(checkpoint_dir or f"{output}.checkpoints"), resume=resume, device=device,
                           trust_remote_code=trust_remote_code, max_train_samples=max_train_samples,
                           max_eval_samples=max_eval_samples)
    out = run_distill(teacher, config, str(output), overwrite=overwrite)
    import os

    from lean.models import read_manifest

    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 writes and reports
    manifest = read_manifest(out)
    test, retention = manifest["metrics"]["test"], manifest["retention"]
    metric = retention["metric"]
    typer.echo(f"wrote {out}  {manifest['student']['layers']} layers  test {metric} {test[metric]:.4f}  "
               f"retention {retention['value']:.4f} of the teacher")


# ---- quantize -------------------------------------------------------------------------------

@app.command()
def quantize(
    model: str = typer.Argument(..., help="Full-precision model directory (a classifier or a causal LM)."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory to write the quantized model into."),
    method: str = typer.Option(..., "--method", "-m", help="bnb-int8 (LLM.int8), bnb-nf4, bnb-fp4 (4-bit) or dynamic-int8 (PyTorch, CPU)."),
    threshold: Optional[float] = typer.Option(None, help="bnb-int8: outlier threshold (default 6.0; 0 turns the fp16 outlier path off)."),
    double_quant: Optional[bool] = typer.Option(None, "--double-quant/--no-double-quant", help="bnb-nf4/fp4: quantize the block scales too (default on)."),
    compute_dtype: Optional[str] = typer.Option(None, help="bnb-nf4/fp4: float32 (default), bfloat16 or float16."),
    blocksize: Optional[int] = typer.Option(None, help="bnb-nf4/fp4: weights per scale (default 64)."),
    per_channel: Optional[bool] = typer.Option(None, "--per-channel/--per-tensor", help="dynamic-int8: one scale per output row (default) or one per layer."),
    skip: Optional[List[str]] = typer.Option(None, "--skip", help="Module kept in full precision (repeat; replaces the default: the classifier head / lm_head)."),
    task: Optional[str] = typer.Option(None, help="Task for calibration and evaluation (default: the model's own task from lean.json, else none: calibrate on lean's sample texts, no accuracy check)."),
    text_column: Optional[str] = typer.Option(None, help="Text column of a file or dataset task."),
    label_column: Optional[str] = typer.Option(None, help="Label column of a file or dataset task."),
    calibration_samples: int = typer.Option(32, help="Train-split texts used to measure each layer's quantization error."),
    max_length: Optional[int] = typer.Option(None, help="Truncate texts to this many tokens (default: the model's fine-tuning length, else 128)."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip the test-split accuracy of the quantized model."),
    max_eval_samples: Optional[int] = typer.Option(None, help="Evaluate on the first N test examples only."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (dynamic-int8 runs on the CPU only)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the model's repository."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output directory."),
):
    """Quantize a model to 8 or 4 bits (bitsandbytes int8/nf4/fp4, PyTorch dynamic int8)."""
    from lean.quantize import check_source, config_from_dict, quantize_dir, worst_layers
    from lean.steps import check_output_dir

    method_options = {"threshold": threshold, "double_quant": double_quant, "compute_dtype": compute_dtype,
                      "blocksize": blocksize, "per_channel": per_channel, "skip": list(skip) if skip else None}
    config = config_from_dict(
        method=method, **{k: v for k, v in method_options.items() if v is not None},  # only what was given
        task=task, text_column=text_column, label_column=label_column, calibration_samples=calibration_samples,
        max_length=max_length, evaluate=not no_eval, max_eval_samples=max_eval_samples, device=device,
        trust_remote_code=trust_remote_code)
    check_source(model)
    check_output_dir(output, overwrite, model, [task])
    out = quantize_dir(model, config, str(output), overwrite=overwrite)
    from lean.models import read_manifest

    manifest = read_manifest(out)
    q, size = manifest["quantization"], manifest["size"]
    typer.echo(f"wrote {out}  {q['method']} on {q['device']}: {len(q['quantized'])} layers quantized, "
               f"{len(q['skipped'])} kept in full precision ({', '.join(q['skipped']) or 'none'})")
    typer.echo(f"  linear weights {size['linear_bytes_before'] / 2**20:.2f} -> {size['linear_bytes_after'] / 2**20:.2f} MiB "
               f"({size['linear_ratio']:.3f}x)   whole model {size['model_bytes_before'] / 2**20:.2f} -> "
               f"{size['model_bytes_after'] / 2**20:.2f} MiB ({size['model_ratio']:.3f}x)")
    typer.echo(f"  logits vs full precision on {q['calibration']['samples']} calibration texts: "
               f"SQNR {q['output']['logits_sqnr_db']:.1f} dB, top-1 agreement {q['output']['top1_agreement']:.4f}")
    typer.echo("  worst layers (output SQNR against full precision; lower loses more):")
    for layer in worst_layers(manifest, 5):
        typer.echo(f"    {layer['sqnr_db']:7.2f} dB  {layer['name']}  {layer['type']} {'x'.join(map(str, layer['shape']))}")
    test = manifest.get("metrics", {}).get("test")
    if test and "perplexity" in test:
        change = manifest["metrics"].get("test_perplexity_change_vs_parent")
        versus = f"  ({change:+.3f} vs the full-precision model)" if change is not None else ""
        typer.echo(f"  test perplexity {test['perplexity']:.3f}  ({test['tokens']} tokens){versus}")
    elif test:
        change = manifest["metrics"].get("test_accuracy_change_vs_parent")
        versus = f"  ({change * 100:+.2f} points vs the full-precision model)" if change is not None else ""
        typer.echo(f"  test accuracy {test['accuracy']:.4f}  macro-F1 {test['macro_f1']:.4f}  (n={test['n']}){versus}")
    if not manifest.get("task_accuracy", {}).get("checked", True):
        typer.echo(f"  no task accuracy was checked: {manifest['task_accuracy']['why']}")


# ---- export ---------------------------------------------------------------------------------

@app.command()
def export(
    model: str = typer.Argument(..., help="PyTorch model directory (a classifier or a causal LM), Hub id, or built-in alias."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory to write the ONNX model into."),
    task: Optional[str] = typer.Option(None, help="Task for validation and calibration (default: the model's own task from lean.json, else none: checked against PyTorch on lean's sample texts)."),
    text_column: Optional[str] = typer.Option(None, help="Text column of a file or dataset task (default: text)."),
    label_column: Optional[str] = typer.Option(None, help="Label column of a file or dataset task (default: label)."),
    exporter: str = typer.Option("auto", help="auto (optimum-onnx where installed, else torch), torch (torch.onnx dynamo + onnxruntime's tools) or optimum."),
    opset: Optional[int] = typer.Option(None, help="ONNX opset (default: the exporter's choice for the architecture)."),
    optimize: Optional[str] = typer.Option(None, help="ORTOptimizer level: O1 basic, O2 transformer fusions (exact), O3 + GELU approximation, O4 + fp16 (CUDA)."),
    fp16: bool = typer.Option(False, "--fp16", help="Cast weights and activations to fp16 (CUDA only)."),
    quantize: Optional[str] = typer.Option(None, help="int8-dynamic or int8-static (ORTQuantizer); with --runtime openvino, int8-static (NNCF post-training, calibrated) or int8-weights (NNCF 8-bit weight-only)."),
    calibration_samples: int = typer.Option(128, help="Train-split texts that calibrate int8-static ranges."),
    atol: float = typer.Option(1e-4, help="fp32 gate: largest allowed |ONNX - PyTorch| logit difference."),
    max_metric_drop: float = typer.Option(1.0, help="fp16/int8 gate: most test accuracy/macro-F1 points allowed below the source."),
    min_agreement: float = typer.Option(0.98, help="fp16/int8 gate (classifiers): least share of test predictions equal to PyTorch's."),
    max_perplexity_ratio: float = typer.Option(1.05, help="fp16/int8 gate (causal LMs): most test perplexity allowed, as a multiple of PyTorch's."),
    max_length: Optional[int] = typer.Option(None, help="Tokens per text (default: the model's training max_length, else 128)."),
    device: str = typer.Option("auto", help="Where the ONNX model is validated: auto, cpu or cuda."),
    max_eval_samples: Optional[int] = typer.Option(None, help="Validate on the first N test texts only."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the model's repository."),
    latency_check: bool = typer.Option(True, "--latency-check/--no-latency-check", help="Time the result against its plainer form (unfused, or int8-dynamic) and warn when it is slower here."),
    runtime: str = typer.Option("onnxruntime", help="What the directory runs on: onnxruntime (model.onnx) or openvino (model.xml + model.bin; classifiers; pip install \"lean[openvino]\")."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output directory."),
):
    """Export a model to ONNX (or OpenVINO IR), validated against PyTorch (optional fusions and int8)."""
    from lean.export import ExportConfig
    from lean.export import export as run_export
    from lean.models import read_manifest
    from lean.steps import check_output_dir

    check_output_dir(output, overwrite, model, [task])
    config = ExportConfig(task=task, text_column=text_column, label_column=label_column, exporter=exporter, opset=opset,
                          optimize=optimize, fp16=fp16, quantize=quantize, calibration_samples=calibration_samples, atol=atol,
                          max_metric_drop=max_metric_drop, min_agreement=min_agreement,
                          max_perplexity_ratio=max_perplexity_ratio, max_length=max_length,
                          device=device, max_eval_samples=max_eval_samples, trust_remote_code=trust_remote_code,
                          latency_check=latency_check, runtime=runtime)
    out = run_export(model, config, str(output), overwrite=overwrite)
    manifest = read_manifest(out)
    v = manifest["validation"]
    graph = manifest.get("openvino") or manifest["onnx"]  # the section of the runtime it was exported for
    line = f"wrote {out}  {graph['precision']}  max|diff| {v['max_abs_diff']:.2e}  agreement {v['agreement']:.2%}"
    test, source = manifest.get("metrics", {}).get("test"), manifest.get("source_metrics", {}).get("test")
    if test and source:
        line += f"  test accuracy {test['accuracy']:.4f} (PyTorch {source['accuracy']:.4f})"
    if "generation_agreement" in v:
        line += f"  identical generations {v['generation_agreement']:.0%}"
    if "perplexity" in v:
        line += f"  {v['perplexity']['split']} perplexity {v['perplexity']['onnx']:.3f} (PyTorch {v['perplexity']['pytorch']:.3f})"
    typer.echo(line + f"  (exporter: {manifest['exporter']['name']})")
    fusion = graph.get("fusion")
    if fusion:
        fused = ", ".join(f"{op} {n}" for op, n in fusion["fused"].items()) or "nothing"
        typer.echo(f"fused: {fused}  (nodes {fusion['nodes']['before']} -> {fusion['nodes']['after']})")
    speed = graph.get("latency_check")
    if speed:
        typer.echo(f"latency: {speed['ms']:.2f} ms vs {speed['plainer_ms']:.2f} ms for {speed['plainer']} "
                   f"({speed['speedup']:.2f}x, batch {speed['batch_size']} x {speed['seq_len']})")
        if speed.get("warning"):
            typer.echo(f"warning: {speed['warning']}", err=True)
    if manifest.get("note"):
        typer.echo(manifest["note"])


# ---- predict --------------------------------------------------------------------------------

@app.command()
def predict(
    model_dir: Path = typer.Argument(..., help="Directory written by lean export (model.onnx, or model.xml with --runtime openvino, + tokenizer)."),
    texts: Optional[List[str]] = typer.Argument(None, help="Texts to classify (or prompts to continue); default: --file or stdin."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Read inputs from a file: one text per line, or JSONL with a \"text\" field."),
    batch_size: int = typer.Option(32, help="Texts per onnxruntime call."),
    provider: Optional[str] = typer.Option(None, help="onnxruntime execution provider (default: CUDAExecutionProvider when a GPU is there, else CPUExecutionProvider)."),
    max_length: Optional[int] = typer.Option(None, help="Truncate inputs to this many tokens (default: the export's max_length)."),
    threads: Optional[int] = typer.Option(None, help="intra-op threads (default: physical cores)."),
    max_new_tokens: int = typer.Option(32, help="Causal LMs: tokens to generate per prompt (greedy)."),
):
    """Run an exported ONNX model with onnxruntime alone (no torch): labels or generated text.

    A causal LM's prompt longer than its context less --max-new-tokens keeps its last tokens, with a
    warning on stderr."""
    import json
    import warnings

    from lean import checks
    from lean.runtime import OnnxModelError, load

    checks.positive_int("batch_size", batch_size, high=65_536)
    checks.optional_positive_int("max_length", max_length, high=1_000_000)
    checks.optional_positive_int("threads", threads, high=4096)
    checks.positive_int("max_new_tokens", max_new_tokens, high=1_000_000)
    inputs = _predict_inputs(texts, file)
    try:
        model = load(model_dir, provider=provider, threads=threads)
        if model.kind == "lm":
            empty = next((i for i, t in enumerate(inputs, 1) if not t.strip()), None)
            if empty is not None:
                raise LeanError(f"prompt {empty} is empty: a causal LM needs text to continue")
            with warnings.catch_warnings(record=True) as caught:  # a truncated prompt: one line on stderr each
                warnings.simplefilter("always")
                rows = [{"generated_text": t} for t in model.generate(inputs, max_new_tokens=max_new_tokens,
                                                                       batch_size=batch_size, max_length=max_length)]
            for w in caught:
                typer.echo(f"warning: {w.message}", err=True)
        else:
            rows = model.predict(inputs, batch_size=batch_size, max_length=max_length)
    except OnnxModelError as e:
        raise LeanError(str(e)) from None
    for row in rows:
        typer.echo(json.dumps(row))


def _predict_inputs(texts: Optional[List[str]], file: Optional[Path]) -> List[str]:
    """The texts to run: arguments, else --file, else stdin; each must be UTF-8 text."""
    if texts:
        for number, text in enumerate(texts, 1):
            try:
                text.encode("utf-8")  # argv bytes that are not UTF-8 arrive as lone surrogates
            except UnicodeEncodeError:
                raise LeanError(f"argument text {number} is not UTF-8: pass UTF-8 text") from None
        inputs = list(texts)
    elif file is not None:
        if file.is_dir():
            raise LeanError(f"input file '{file}' is a directory: pass a text or JSONL file")
        if not file.is_file():
            raise LeanError(f"input file '{file}' does not exist")
        inputs = _read_inputs(file.read_text(errors="replace").splitlines(), str(file))
    elif not sys.stdin.isatty():
        try:
            text = sys.stdin.buffer.read().decode("utf-8") if hasattr(sys.stdin, "buffer") else sys.stdin.read()
        except UnicodeDecodeError as e:
            raise LeanError(f"stdin is not UTF-8 text (byte {e.start}): pass UTF-8 text") from None
        inputs = _read_inputs(text.splitlines(), "stdin")
    else:
        raise LeanError("no input texts: pass texts as arguments, --file FILE, or lines on stdin")
    if not inputs:
        raise LeanError("no input texts: the input is empty (one text per line, or JSONL with a \"text\" field)")
    return inputs


def _read_inputs(lines: List[str], where: str) -> List[str]:
    """Non-blank lines; a line that is a JSON object gives its "text" field."""
    import json

    inputs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # RecursionError: a line nested thousands deep
                raise LeanError(f"{where} line {number} starts with '{{' but is not valid JSON (or is nested too deeply)") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise LeanError(f"{where} line {number} is a JSON object without a string \"text\" field")
            inputs.append(record["text"])
        else:
            inputs.append(line)
    return inputs


# ---- bench ----------------------------------------------------------------------------------

@app.command()
def bench(
    targets: Optional[List[str]] = typer.Argument(None, help="A suite .yaml file, or model directories to compare "
                                                  "(the first is the baseline). None: the built-in default suite."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run directory (default: runs/bench/<suite>-<timestamp>)."),
    runs_dir: Path = typer.Option(Path("runs/cache"), "--runs-dir", help="Cache of built intermediate directories, reused by config hash."),
    variants: Optional[str] = typer.Option(None, "--variants", help="Comma-separated variants to run (the baseline is always included)."),
    task: Optional[str] = typer.Option(None, help="Task for model directories (default: the first directory's lean.json)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds per variant's measurement (default: the suite's measure.timeout_s)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help="Intra-op threads (default: the suite's, else one per physical core)."),
    list_variants: bool = typer.Option(False, "--list", help="Print the suite's variants and whether each can run here, then exit."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output directory."),
    rigorous: bool = typer.Option(False, "--rigorous", help="Time every latency cell three times as long: steadier "
                                  "speedups on a noisy machine, about two minutes more on the default suite."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the models' repositories (a suite cannot)."),
    min_quiet_rounds: Optional[int] = typer.Option(None, "--min-quiet-rounds", help="A latency cell left with fewer "
                                                   "quiet rounds than this (slow rounds set aside) is reported "
                                                   f"unreliable (default {MIN_QUIET_ROUNDS})."),
):
    """Measure accuracy, latency and memory of every variant in a suite (default: the built-in suite)."""
    from lean.bench.suite import directories_suite, load_suite

    targets = list(targets or [])
    suite_files = [t for t in targets if t.endswith((".yaml", ".yml"))]
    if suite_files and len(targets) > 1:
        raise LeanError("pass one suite .yaml file, or model directories, not both")
    if task is not None and (not targets or suite_files):
        raise LeanError("--task applies to model directories; a suite names its task in its YAML")
    if not targets:
        suite = load_suite()
    elif suite_files:
        suite = load_suite(suite_files[0])
    else:
        suite = directories_suite(targets, task=task)
    selected = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    if list_variants:
        from lean.bench.runner import list_lines

        typer.echo("\n".join(list_lines(suite, selected, device, trust_remote_code)))
        return
    from lean.bench.runner import BenchOptions, default_output, run_bench, suite_inputs
    from lean.steps import check_output_dir

    out = check_output_dir(output or default_output(suite), overwrite, inputs=suite_inputs(suite))
    options = BenchOptions(output=out, runs_dir=runs_dir, variants=selected, timeout_s=timeout, device=device,
                           threads=threads, overwrite=overwrite, rigorous=rigorous, trust_remote_code=trust_remote_code,
                           **({} if min_quiet_rounds is None else {"min_quiet_rounds": min_quiet_rounds}))
    from rich.console import Console

    from lean.bench.history import spell_text
    from lean.bench.reliability import busy_line
    from lean.bench.report import results_table

    results = run_bench(suite, options, console=Console(stderr=True))
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: wide enough that no figure is cut to "0.98…"
        console = Console(width=220)
    console.print(results_table(results))
    spell = spell_text(results)
    if spell:
        typer.echo(f"note: {spell}", err=True)
    busy = busy_line(results)
    if busy:
        typer.echo(f"note: {busy}", err=True)
    typer.echo(f"wrote {out}/results.json, results.csv, report.md, pareto.png")


# ---- serve ----------------------------------------------------------------------------------

@app.command()
def serve(
    models: List[str] = typer.Argument(..., help="Directories lean wrote for deployment (ONNX, OpenVINO, tfidf-logreg), each DIR (named after it) or NAME=DIR."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    max_batch_size: int = typer.Option(32, help="Texts per runtime call (1 turns batching off)."),
    max_wait_ms: float = typer.Option(5.0, help="How long a queued text waits for others before its batch runs."),
    max_queue: int = typer.Option(256, help="Texts waiting per model; more get 429 with Retry-After."),
    max_texts: int = typer.Option(64, help="Texts in one request (422 beyond)."),
    max_text_chars: int = typer.Option(20_000, help="Characters in one text or prompt (422 beyond)."),
    max_body_bytes: int = typer.Option(1_048_576, help="Request body size (413 beyond)."),
    max_new_tokens: int = typer.Option(256, help="Causal LMs: the most tokens one generate request may ask for."),
    max_length: Optional[int] = typer.Option(None, help="Tokens per text (default: the export's max_length)."),
    threads: Optional[int] = typer.Option(None, help="onnxruntime intra-op threads per model (default: physical cores)."),
    provider: Optional[str] = typer.Option(None, help="onnxruntime execution provider (default: CUDA when present, else CPU)."),
    drain_timeout: float = typer.Option(30.0, help="After SIGTERM, seconds requests in flight may take before they are cut."),
    timeout_keep_alive: float = typer.Option(5.0, help="Seconds a connection may stay open with no request under way."),
    header_timeout: float = typer.Option(10.0, help="Seconds from a request's first byte to the end of its headers (408 beyond)."),
    body_timeout: float = typer.Option(30.0, help="Seconds from the end of the headers to the end of the body (408 beyond)."),
    limit_concurrency: int = typer.Option(512, help="Open connections; one more is answered 503 and closed."),
    max_header_bytes: int = typer.Option(16_384, help="Request line and headers (431 beyond)."),
    ort_spinning: bool = typer.Option(False, "--ort-spinning", help="Let onnxruntime's idle threads spin between calls (off: they leave the CPU to the server)."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request (costs throughput)."),
    triton_repository: Optional[Path] = typer.Option(None, help="Write the models as a Triton Inference Server repository here, then exit."),
    triton_instances: int = typer.Option(1, help="With --triton-repository: ONNX model instances per device."),
    triton_kind: str = typer.Option("KIND_CPU", help="With --triton-repository: KIND_CPU or KIND_GPU."),
):
    """Serve exported models over HTTP with dynamic batching (no torch), or write a Triton repository."""
    from lean.serve.config import ServeConfig

    config = ServeConfig(models=list(models), host=host, port=port, max_batch_size=max_batch_size,
                         max_wait_ms=max_wait_ms, max_queue=max_queue, max_texts=max_texts,
                         max_text_chars=max_text_chars, max_body_bytes=max_body_bytes, max_new_tokens=max_new_tokens,
                         max_length=max_length, threads=threads, provider=provider, drain_timeout_s=drain_timeout,
                         ort_spinning=ort_spinning, timeout_keep_alive_s=timeout_keep_alive,
                         header_timeout_s=header_timeout, body_timeout_s=body_timeout,
                         limit_concurrency=limit_concurrency, max_header_bytes=max_header_bytes)
    if triton_repository is not None:
        from lean.serve.triton import TritonConfig, write_triton_repository

        for spec in config.models:
            out = write_triton_repository(spec.path, triton_repository, TritonConfig(
                name=spec.name, max_batch_size=max_batch_size, max_queue_delay_us=int(max_wait_ms * 1000),
                instances=triton_instances, kind=triton_kind, threads=threads))
            typer.echo(f"wrote {out} (+ {spec.name}_tokenizer, {spec.name}_onnx)")
        return
    from lean.serve.server import serve as run_server

    run_server(config, access_log=access_log)


# ---- optimize -------------------------------------------------------------------------------

@app.command()
def optimize(
    model: str = typer.Argument(..., help="A teacher directory made by lean (its lean.json records the task), or a base model fine-tuned first on --task."),
    output: Path = typer.Option(..., "--output", "-o", help="Run directory: every trial, report.md, pareto.png, best/."),
    task: Optional[str] = typer.Option(None, help="Task (as in lean finetune): fine-tunes a base model first; default: the teacher's own task."),
    text_column: Optional[str] = typer.Option(None, help="Text column of a file or dataset task."),
    label_column: Optional[str] = typer.Option(None, help="Label column of a file or dataset task."),
    split_seed: int = typer.Option(42, help="Seed of the train/validation/test split (a teacher's recorded seed wins)."),
    max_drop: Optional[float] = typer.Option(None, help="Budget: accuracy points a candidate may lose against the teacher, on validation."),
    relative: bool = typer.Option(False, "--relative", help="--max-drop is a percentage of the teacher's accuracy."),
    max_ppl_ratio: Optional[float] = typer.Option(None, help="Budget for causal LMs: perplexity at most this times the teacher's."),
    device: str = typer.Option("auto", help="Deployment target: auto, cpu or cuda (chooses the built-in space)."),
    batch_size: int = typer.Option(1, help="Batch size at which latency is measured."),
    seq_length: int = typer.Option(128, help="Tokens per text at which latency is measured."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: the physical cores)."),
    objective: str = typer.Option("latency", help="latency, throughput, memory (peak) or size (weights)."),
    time_budget: Optional[str] = typer.Option(None, help="Stop starting new trials after this long, e.g. 30m, 1h, 90s."),
    max_trials: Optional[int] = typer.Option(None, help="Stop after this many candidates measured in full."),
    space: Optional[Path] = typer.Option(None, help="Search space YAML (default: the built-in one of the device; see docs/optimize.md)."),
    runs_dir: Path = typer.Option(Path("runs/cache"), help="Build cache shared with lean bench: nothing is built twice."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output, reusing its finished trials."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier lean optimize run in --output."),
):
    """Find the fastest (or smallest) model within an accuracy budget; best/ is ready for lean predict."""
    from lean.optimize import Budget, OptimizeConfig, Target, optimize as run_optimize

    config = OptimizeConfig(model=model, output=str(output), task=task, text_column=text_column,
                            label_column=label_column, split_seed=split_seed,
                            budget=Budget(max_drop=max_drop, relative=relative, max_ppl_ratio=max_ppl_ratio),
                            target=Target(device=device, batch_size=batch_size, seq_length=seq_length, threads=threads),
                            objective=objective, time_budget=time_budget, max_trials=max_trials,
                            space=str(space) if space else None, runs_dir=str(runs_dir), resume=resume,
                            overwrite=overwrite)
    from lean.optimize.report import loss_text

    summary = run_optimize(config, log=lambda line: typer.echo(line, err=True))
    chosen = summary.get("chosen")
    if chosen is None:
        typer.echo("nothing could be measured: see the report", err=True)
    elif summary["met_budget"]:
        typer.echo(f"chosen: {chosen} (speedup {summary.get('speedup')}x over the teacher, "
                   f"on test {loss_text(summary.get('test_loss'), config.budget)} against it); ready in {output}/best")
    else:
        typer.echo(f"no candidate met the budget; the closest, {chosen}, is in {output}/best")
    typer.echo(f"wrote {output}/report.md, summary.json, trials.json, pareto.png")
    if summary.get("interrupted"):
        raise typer.Exit(130)


def _click_exceptions():
    try:
        from typer._click import exceptions  # typer vendors click from 0.2x on
    except ImportError:
        from click import exceptions
    return exceptions


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {' '.join(message.split())}", err=True)  # one line, whatever the message held
    sys.exit(code)


def main() -> None:
    """Entry point: bad input is one line on stderr and exit 2, never a traceback; Ctrl-C is "interrupted", 130.

    The app runs outside click's standalone mode, which would print usage errors as a multi-line box
    and turn Ctrl-C into a silent exit 130 before we could say so."""
    from lean.compat import quiet_library_progress_bars
    from lean.quantize.bnb import silence_known_notices

    quiet_library_progress_bars()
    silence_known_notices()  # bitsandbytes, pulled in by transformers' Trainer too, logs a harmless line at import
    click = _click_exceptions()
    try:
        code = app(standalone_mode=False)
    except LeanError as e:
        _fail(str(e), e.exit_code)
    except click.NoArgsIsHelpError:
        sys.exit(2)  # the help is already printed
    except click.UsageError as e:
        where = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
        _fail(e.format_message() + where, 2)
    except click.ClickException as e:
        _fail(e.format_message(), e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    except OSError as e:  # a path the user named: too long, no permission, a file where a folder belongs
        error = path_error(e)
        if error is None:
            raise
        _fail(str(error), 2)
    except RuntimeError as e:  # pathlib's expanduser on ~user of an unknown user names neither
        error = unknown_home(sys.argv[1:]) if "home directory" in str(e) else None
        if error is None:
            raise
        _fail(str(error), 2)
    if code == 130:  # typer turns KeyboardInterrupt into exit code 130
        typer.echo("interrupted", err=True)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()

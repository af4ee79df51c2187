"""The `lean` command line: one Typer app; each command builds a config and calls the library.

Heavy libraries are imported inside the commands, so `lean --help` is instant and `lean predict`
never loads torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from lean.errors import LeanError

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
    model: str = typer.Argument(..., help="Base model: a local directory, a Hub id, or a built-in alias (minilm-l6)."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory to write the fine-tuned model into."),
    task: str = typer.Option("bbc-news", help="Task: bbc-news, a .csv/.jsonl/.parquet file, a datasets directory, or a Hub dataset id."),
    text_column: Optional[str] = typer.Option(None, help="Text column of a file or dataset task (default: text)."),
    label_column: Optional[str] = typer.Option(None, help="Label column of a file or dataset task (default: label)."),
    epochs: float = typer.Option(3.0, help="Training epochs."),
    lr: float = typer.Option(1e-4, help="Peak learning rate (linear warmup and decay)."),
    batch_size: int = typer.Option(16, help="Training batch size per device."),
    max_length: int = typer.Option(128, help="Truncate texts to this many tokens."),
    seed: int = typer.Option(42, help="Training seed."),
    split_seed: int = typer.Option(42, help="Seed of the train/validation/test split."),
    lora: bool = typer.Option(False, "--lora", help="Train a LoRA adapter (merged into the weights before saving)."),
    lora_r: int = typer.Option(8, help="LoRA rank."),
    early_stopping_patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without a better validation accuracy."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    max_train_samples: Optional[int] = typer.Option(None, help="Train on the first N training examples only."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the model's repository."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output directory."),
):
    """Fine-tune a base model into a teacher classifier (transformers Trainer, full or LoRA)."""
    from lean.finetune import FinetuneConfig
    from lean.finetune import finetune as run_finetune
    from lean.steps import check_output_dir

    check_output_dir(output, overwrite)
    config = FinetuneConfig(task=task, text_column=text_column, label_column=label_column, epochs=epochs, lr=lr,
                            batch_size=batch_size, max_length=max_length, seed=seed, split_seed=split_seed, lora=lora,
                            lora_r=lora_r, early_stopping_patience=early_stopping_patience, device=device,
                            max_train_samples=max_train_samples, trust_remote_code=trust_remote_code)
    out = run_finetune(model, config, str(output), overwrite=overwrite)
    from lean.models import read_manifest

    test = read_manifest(out).get("metrics", {}).get("test", {})
    typer.echo(f"wrote {out}  test accuracy {test.get('accuracy', float('nan')):.4f}  macro-F1 {test.get('macro_f1', float('nan')):.4f}")


# ---- distill --------------------------------------------------------------------------------

@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def distill(ctx: typer.Context):
    """Distill a teacher into a smaller student (soft targets, hidden states, attention)."""
    _not_built("distill")


# ---- quantize -------------------------------------------------------------------------------

@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def quantize(ctx: typer.Context):
    """Quantize a model to 8 or 4 bits (bitsandbytes int8/nf4/fp4, PyTorch dynamic int8)."""
    _not_built("quantize")


# ---- export ---------------------------------------------------------------------------------

@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def export(ctx: typer.Context):
    """Export a model to ONNX, validated against PyTorch (optional fusions and int8)."""
    _not_built("export")


# ---- predict --------------------------------------------------------------------------------

@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def predict(ctx: typer.Context):
    """Run an exported ONNX model with onnxruntime alone (no torch): labels or generated text."""
    _not_built("predict")


# ---- bench ----------------------------------------------------------------------------------

@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context):
    """Measure accuracy, latency and memory of every variant in a suite (default: the built-in suite)."""
    _not_built("bench")


def main() -> None:
    """Entry point: bad input is one line on stderr and exit 2, never a traceback."""
    try:
        app()
    except LeanError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

"""Training arguments for the steps that train (finetune, distill), built in one place.

Both steps train with the Trainer on the same conventions: linear warmup and decay, checkpoints in
safetensors, mixed precision on CUDA (bf16 where the GPU has it, else fp16), full precision on the
CPU, no reporting integrations, and lean's own progress line instead of tqdm. Each step adds what
is its own (evaluation cadence, best-model selection, gradient accumulation) as keywords.
"""

from __future__ import annotations

from typing import Any

from lean.compat import safetensors_checkpoint_kwargs, warmup_kwargs


def training_arguments(output_dir: str, *, epochs: float, lr: float, batch_size: int, weight_decay: float,
                       warmup_ratio: float, seed: int, device: str, **extra: Any):
    """A `TrainingArguments` with lean's conventions; `extra` adds or overrides keywords."""
    import torch
    from transformers import TrainingArguments

    cuda = device.startswith("cuda")
    bf16 = cuda and torch.cuda.is_bf16_supported()
    values = dict(
        output_dir=output_dir, num_train_epochs=epochs, learning_rate=lr,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=max(batch_size, 32),  # evaluation holds no gradients: bigger batches fit
        weight_decay=weight_decay, **warmup_kwargs(warmup_ratio), **safetensors_checkpoint_kwargs(),
        logging_steps=10, report_to=[], disable_tqdm=True, seed=seed, use_cpu=device == "cpu",
        fp16=cuda and not bf16, bf16=bf16,
        dataloader_num_workers=0,  # workers would fork the tokenizer and the tiny datasets gain nothing
    )
    values.update(extra)
    return TrainingArguments(**values)

"""Fine-tune a base model into a teacher on a classification task, on transformers' Trainer.

    lean finetune minilm-l6 --task bbc-news -o runs/teacher

    lean finetune --task bbc-news-lm --init-config llama-small -o runs/lm-teacher

The second form trains a causal LM from a named small config, with a tokenizer learnt from the
train split (see lean/lm.py); a causal LM directory or Hub id as MODEL continues its training.
Trainer gives multi-GPU for free: `accelerate launch -m lean.cli finetune ...` or `torchrun`.
With --lora the PEFT adapter is merged before saving, so the directory loads without peft.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lean import checks
from lean.errors import LeanError, first_line


@dataclass
class FinetuneConfig:
    task: str | None = None  # None: the parent's task (lean.lineage), else bbc-news
    text_column: str | None = None
    label_column: str | None = None
    epochs: float = 3.0
    # MiniLM-sized encoders train well at a higher rate than BERT-base's usual 2e-5.
    lr: float = 1e-4
    batch_size: int = 16
    max_length: int = 128  # most BBC articles are longer; their first 128 tokens already name the topic
    seed: int = 42
    split_seed: int | None = None  # None: the parent's split seed when on its task, else 42
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    early_stopping_patience: int | None = None  # in evaluations (one per epoch); None trains every epoch
    device: str = "auto"
    trust_remote_code: bool = False
    max_train_samples: int | None = None  # a slice of the train split, for quick runs and tests
    max_eval_samples: int | None = None
    task_kind: str = "auto"  # classification, lm, or auto (from the task spec)
    # causal LMs
    init_config: str | None = None  # train from scratch from a named small config (lean.lm.INIT_CONFIGS)
    vocab_size: int = 8192  # of the tokenizer learnt with --init-config
    perplexity_stride: int | None = None  # sliding-window stride for perplexity; default max_length // 2

    def __post_init__(self):
        # Bounds refuse typos and values that cannot train (AdamW diverges above lr 1); see lean/checks.py.
        checks.finite_positive("epochs", self.epochs, high=10_000)
        checks.finite_positive("lr", self.lr, high=1.0)
        checks.positive_int("batch_size", self.batch_size, high=65_536)
        checks.int_range("max_length", self.max_length, 8, 8192)
        checks.seed("seed", self.seed)
        if self.split_seed is not None:  # None: the parent's (lean.lineage)
            checks.seed("split_seed", self.split_seed)
        checks.finite_range("weight_decay", self.weight_decay, 0.0, 1.0)
        checks.finite_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        checks.positive_int("lora_r", self.lora_r, high=65_536)
        checks.positive_int("lora_alpha", self.lora_alpha, high=65_536)
        checks.optional_positive_int("early_stopping_patience", self.early_stopping_patience)
        checks.optional_positive_int("max_train_samples", self.max_train_samples)
        checks.optional_positive_int("max_eval_samples", self.max_eval_samples)
        checks.int_range("vocab_size", self.vocab_size, 256, 1_000_000)  # a byte-level BPE needs its 256 bytes
        checks.optional_positive_int("perplexity_stride", self.perplexity_stride)


def finetune(model: str | None, config: FinetuneConfig, output: str, overwrite: bool = False) -> Path:
    """Fine-tune `model` (directory, Hub id or built-in alias) and write the teacher to `output`.

    `model` may be None with `config.init_config`: a causal LM is then trained from scratch."""
    from lean.steps import run_step

    if model is None and not config.init_config:
        raise LeanError("give a model to fine-tune, or init_config to train a causal LM from scratch")
    return run_step("finetune", model if model is not None else f"init:{config.init_config}", config, output,
                    overwrite=overwrite)


def run(source: str, config: FinetuneConfig, out: Path) -> dict[str, Any]:
    """The step: train, evaluate on validation and test, save model + tokenizer into `out`.

    `source` "init:NAME" (with config.init_config) means: no parent model, train from scratch."""
    from transformers import EarlyStoppingCallback, Trainer, set_seed

    from lean.lineage import inherit
    from lean.metrics import TextDataset, classification_metrics, predict_logits
    from lean.models import environment, load_config, align_pad_token, load_model, load_tokenizer, resolve_device
    from lean.progress import RichProgressCallback

    device = resolve_device(config.device)
    inherited = inherit(None if source.startswith("init:") else source, {
        "task": config.task, "split_seed": config.split_seed, "text_column": config.text_column,
        "label_column": config.label_column, "max_length": config.max_length,
        "kind": None if config.task_kind == "auto" else config.task_kind}, defaults={"task": "bbc-news"})
    task = inherited.load_task()
    if task.kind == "lm":
        lm = _run_lm(None if source.startswith("init:") else source, config, out, task, device)
        return {**lm, "inherited": inherited.record()} if lm else lm
    if config.init_config:
        raise LeanError("--init-config trains a causal LM from scratch: use it with a language-modelling task such as bbc-news-lm")
    base_config = load_config(source, config.trust_remote_code)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    set_seed(config.seed)
    id2label = dict(enumerate(task.label_names))
    model = load_model(source, "classification", config.trust_remote_code, num_labels=task.num_labels,
                       id2label=id2label, label2id={v: k for k, v in id2label.items()},
                       ignore_mismatched_sizes=getattr(base_config, "num_labels", task.num_labels) != task.num_labels)
    align_pad_token(model, tokenizer)
    if config.lora:
        model = _with_lora(model, config)

    train = task.train.take(config.max_train_samples)
    validation = task.validation.take(config.max_eval_samples)
    test = task.test.take(config.max_eval_samples)
    args = _training_args(config, out, device, eval_strategy="epoch",
                          save_strategy="epoch" if config.early_stopping_patience else "no",
                          load_best_model_at_end=bool(config.early_stopping_patience), metric_for_best_model="accuracy")
    callbacks = [RichProgressCallback("finetune")]
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))

    def compute_metrics(pred):
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=TextDataset(tokenizer, train, config.max_length, model),
        eval_dataset=TextDataset(tokenizer, validation, config.max_length, model),
        data_collator=_collator(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )
    train_result, model = _train(trainer, config)
    if not trainer.is_world_process_zero():
        return {}
    metrics = {}
    for name, split in (("validation", validation), ("test", test)):
        logits = predict_logits(model, tokenizer, split.texts, config.max_length, batch_size=64)
        metrics[name] = classification_metrics(split.labels, logits.argmax(-1).tolist(), task.label_names)
    _save(model, tokenizer, out)
    return {
        "task": task.describe(),
        "inherited": inherited.record(),
        "metrics": metrics,
        "train": {"loss": round(train_result.training_loss, 5), "steps": train_result.global_step,
                  "samples": len(train), "log": trainer.state.log_history},
        "environment": environment(device),
    }


def _train(trainer, config: FinetuneConfig):
    """Train with the rich bar (not Trainer's per-log prints); merge a LoRA adapter; model in eval mode."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    result = trainer.train()
    model = trainer.model
    if config.lora:
        model = model.merge_and_unload()
    checks.check_finite_weights(model, "lower --lr or check the training data")
    return result, model.eval()


def _save(model, tokenizer, out: Path) -> None:
    import shutil

    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / "_checkpoints", ignore_errors=True)


def _training_args(config: FinetuneConfig, out: Path, device: str, **extra):
    from lean.training import training_arguments

    extra.setdefault("save_total_limit", 1)
    return training_arguments(str(out / "_checkpoints"), epochs=config.epochs, lr=config.lr,
                              batch_size=config.batch_size, weight_decay=config.weight_decay,
                              warmup_ratio=config.warmup_ratio, seed=config.seed, device=device, **extra)


def _run_lm(source: str | None, config: FinetuneConfig, out: Path, task, device: str) -> dict[str, Any]:
    """Causal LM training on a text corpus: from a named config (with a new tokenizer) or a given LM."""
    from transformers import DataCollatorForLanguageModeling, EarlyStoppingCallback, Trainer, set_seed
    from lean.lm import BlockDataset, model_from_init_config, perplexity, train_tokenizer
    from lean.models import align_pad_token, environment, load_model, load_tokenizer
    from lean.progress import RichProgressCallback

    set_seed(config.seed)
    train_texts = task.train.texts[: config.max_train_samples] if config.max_train_samples else task.train.texts
    if config.init_config:
        tokenizer = train_tokenizer(train_texts, config.vocab_size)
        model = model_from_init_config(config.init_config, len(tokenizer), max(config.max_length, 512), tokenizer)
    else:
        if source is None:
            raise LeanError("give a causal LM (directory, Hub id) or --init-config NAME to train one from scratch")
        tokenizer = load_tokenizer(source, config.trust_remote_code)
        model = load_model(source, "lm", config.trust_remote_code)
    align_pad_token(model, tokenizer)
    if config.lora:
        model = _with_lora(model, config, task_type="CAUSAL_LM")
    train = BlockDataset(tokenizer, train_texts, config.max_length)
    val_texts = task.validation.texts[: config.max_eval_samples] if config.max_eval_samples else task.validation.texts
    validation = BlockDataset(tokenizer, val_texts, config.max_length)
    callbacks = [RichProgressCallback("finetune (lm)")]
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    args = _training_args(config, out, device, eval_strategy="epoch",
                          save_strategy="epoch" if config.early_stopping_patience else "no",
                          load_best_model_at_end=bool(config.early_stopping_patience), metric_for_best_model="eval_loss",
                          greater_is_better=False)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), callbacks=callbacks)
    result, model = _train(trainer, config)
    if not trainer.is_world_process_zero():
        return {}
    stride = config.perplexity_stride or config.max_length // 2
    test_texts = task.test.texts[: config.max_eval_samples] if config.max_eval_samples else task.test.texts
    metrics = {"validation": perplexity(model, tokenizer, val_texts, config.max_length, stride),
               "test": perplexity(model, tokenizer, test_texts, config.max_length, stride)}
    _save(model, tokenizer, out)
    params = sum(p.numel() for p in model.parameters())
    return {"task": task.describe(), "metrics": metrics,
            "model": {"init_config": config.init_config, "architecture": type(model).__name__, "parameters": params,
                      "vocab_size": len(tokenizer)},
            "train": {"loss": round(result.training_loss, 5), "steps": result.global_step, "tokens": train.tokens,
                      "log": trainer.state.log_history},
            "environment": environment(device)}


def _with_lora(model, config: FinetuneConfig, task_type: str = "SEQ_CLS"):
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise LeanError("--lora needs peft: pip install peft") from None
    lora = LoraConfig(task_type=getattr(TaskType, task_type), r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=0.05)
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise LeanError(f"--lora cannot wrap this architecture: {first_line(e)}") from None


def _collator(tokenizer):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)


from lean.callable_module import make_callable  # noqa: E402  (see lean/callable_module.py)

make_callable(__name__)

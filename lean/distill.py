"""Distill a teacher into a smaller student on transformers' Trainer.

    lean distill --teacher runs/teacher --student-layers 3 -o runs/student-l3
    torchrun --nproc_per_node 2 -m lean.cli distill --teacher runs/teacher --student-layers 3 -o runs/s3

The student is built from the teacher's own layers (DistilBERT's initialisation), loaded from a
directory, or built from a smaller configuration. The loss mixes soft targets at a temperature
(Hinton), the hard labels, hidden states over a layer mapping (TinyBERT) and attention
distributions (MiniLM); see lean/distill_losses.py. Sequence classifiers and causal LMs both work.
"""

from __future__ import annotations

import copy
import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lean import checks
from lean.distill_checkpoints import (CHECKPOINT_MARKER, check_checkpoint_dir, check_checkpoint_location,  # noqa: F401
                                      fingerprint, last_complete_checkpoint, remove_checkpoints, write_fingerprint)
from lean.errors import LeanError, first_line
from lean.model_fields import check_student_overrides

# --student-config keys that are sizes: whole numbers >= 1, checked before any work.
_STUDENT_SIZES = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                  "num_key_value_heads", "head_dim")


@dataclass
class DistillConfig:
    task: str | None = None  # None: the task recorded in the teacher's lean.json
    text_column: str | None = None
    label_column: str | None = None
    kind: str = "auto"  # classification | lm | auto (follow the teacher's head)
    # The student: layers of the teacher (student_layers / layer_map), a model (student) or a config.
    student_layers: int | None = None
    layer_map: list[int] | str | None = None  # student layer i <- teacher layer layer_map[i]
    student: str | None = None
    student_config: dict[str, Any] | list[str] | str | None = None
    # Measured on bbc-news (MiniLM-L6 teacher, 3-layer copy): validation accuracy peaks after the second epoch.
    epochs: float = 2.0
    # A student initialised from the teacher's layers is already close; a higher rate than fine-tuning's
    # 1e-4 lets the shallower stack re-fit in a few epochs.
    lr: float = 2e-4
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int | None = None  # None: the teacher's (lean.lineage), else 128
    seed: int = 42
    split_seed: int | None = None  # None: the teacher's, so the student is scored on the teacher's test split
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    # Loss mix: alpha * T^2 * KL(soft targets) + (1 - alpha) * CE(labels) + hidden * MSE + attention * KL.
    temperature: float = 2.0
    alpha: float = 0.5
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    cache_teacher: bool = False  # teacher logits computed once (logit loss only)
    early_stopping_patience: int | None = None  # in evaluations (one per epoch, or per --save-steps)
    save_steps: int | None = None  # checkpoint (and evaluate) every N steps; None: every epoch
    checkpoint_dir: str | None = None  # kept across a kill for --resume; None: inside the temp output
    resume: bool = False
    device: str = "auto"
    trust_remote_code: bool = False
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    def __post_init__(self):
        if self.kind not in ("auto", "classification", "lm"):
            raise LeanError(f"--kind must be auto, classification or lm, got '{self.kind}'")
        if isinstance(self.layer_map, str):
            self.layer_map = _parse_layer_map(self.layer_map)
        if self.layer_map is not None:
            if isinstance(self.layer_map, (int, float)) or not hasattr(self.layer_map, "__iter__"):
                raise LeanError(f"--layer-map must list teacher layer indices like 0,2,4, got {self.layer_map!r}")
            self.layer_map = [checks.integer("layer_map", i) for i in self.layer_map]
            if not self.layer_map or any(i < 0 for i in self.layer_map) or len(set(self.layer_map)) != len(self.layer_map):
                raise LeanError(f"--layer-map must list distinct teacher layer indices >= 0, got {self.layer_map}")
        if self.student_config is not None:
            self.student_config = _parse_overrides(self.student_config)
            for key in _STUDENT_SIZES:
                if key in self.student_config:
                    checks.positive_int(f"--student-config {key}", self.student_config[key], high=1_000_000)
        sources = [n for n, v in (("--student", self.student), ("--student-config", self.student_config)) if v]
        if len(sources) > 1 or (sources and self.student_layers is not None):
            raise LeanError(f"choose one student: {', '.join(sources + (['--student-layers'] if self.student_layers else []))} were all given")
        if not sources and self.student_layers is None and self.layer_map is None:
            raise LeanError("choose a student: --student-layers N, --layer-map 0,2,4, --student DIR or --student-config key=value")
        if self.student_layers is not None:
            checks.positive_int("student_layers", self.student_layers)
            if self.layer_map is not None and len(self.layer_map) != self.student_layers:
                raise LeanError(f"--layer-map has {len(self.layer_map)} entries but --student-layers is {self.student_layers}: give one")
        self._check_numbers()
        if self.cache_teacher and (self.hidden_weight > 0 or self.attention_weight > 0):
            raise LeanError("--cache-teacher keeps only the teacher's logits, so it cannot serve hidden-state or "
                            "attention losses: drop --cache-teacher or set --hidden-weight/--attention-weight to 0")
        if self.resume and not self.checkpoint_dir:
            raise LeanError("--resume needs the --checkpoint-dir of the run to continue")

    def _check_numbers(self) -> None:
        """Every number finite and in range before any work (see lean/checks.py for the why)."""
        checks.finite_positive("epochs", self.epochs, high=10_000)
        checks.finite_positive("lr", self.lr, high=1.0)  # AdamW diverges above 1
        # T^2 scales the KL: past 100 the soft targets are uniform and the scale overflows float16
        checks.finite_positive("temperature", self.temperature, high=100.0)
        checks.finite_range("alpha", self.alpha, 0.0, 1.0)  # the soft-target share of the loss
        checks.finite_range("hidden_weight", self.hidden_weight, 0.0, 1e6)
        checks.finite_range("attention_weight", self.attention_weight, 0.0, 1e6)
        checks.positive_int("batch_size", self.batch_size, high=65_536)
        checks.positive_int("grad_accum", self.grad_accum, high=65_536)
        if self.max_length is not None:  # None: the teacher's (lean.lineage)
            checks.int_range("max_length", self.max_length, 8, 8192)
        checks.seed("seed", self.seed)
        if self.split_seed is not None:  # None: the teacher's
            checks.seed("split_seed", self.split_seed)
        checks.finite_range("weight_decay", self.weight_decay, 0.0, 1.0)
        checks.finite_range("warmup_ratio", self.warmup_ratio, 0.0, 1.0)
        checks.optional_positive_int("save_steps", self.save_steps)
        checks.optional_positive_int("early_stopping_patience", self.early_stopping_patience)
        checks.optional_positive_int("max_train_samples", self.max_train_samples)
        checks.optional_positive_int("max_eval_samples", self.max_eval_samples)


def _parse_layer_map(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise LeanError(f"--layer-map must be comma-separated layer indices like 0,2,4, got '{text}'") from None


def _parse_overrides(values) -> dict[str, Any]:
    """key=value strings (or one comma-separated string, or a dict) -> a dict with JSON-typed values."""
    if isinstance(values, dict):
        return dict(values)
    items = values.split(",") if isinstance(values, str) else [p for v in values for p in str(v).split(",")]
    out: dict[str, Any] = {}
    for item in (i.strip() for i in items if i.strip()):
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise LeanError(f"--student-config takes key=value pairs like num_hidden_layers=2, got '{item}'")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def distill(teacher: str, config: DistillConfig, output: str, overwrite: bool = False) -> Path:
    """Distill `teacher` (a model directory) into a student written to `output`."""
    from lean.steps import check_output_dir, run_step, step_inputs

    if config.checkpoint_dir:  # both checked before any work (the student, a task file: inputs, never replaced)
        check_checkpoint_location(config.checkpoint_dir, check_output_dir(output, overwrite, teacher,
                                                                          step_inputs(config)), teacher)
    return run_step("distill", teacher, config, output, overwrite=overwrite)


# ---- students -------------------------------------------------------------------------------

def layer_list(model):
    """(state-dict prefix, nn.ModuleList) of the model's transformer blocks.

    BERT family: <base>.encoder.layer; Llama: model.layers; GPT-2: transformer.h; found as the
    ModuleList holding config.num_hidden_layers blocks of one class.
    """
    import torch.nn as nn

    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and len({type(m) for m in module}) == 1:
            return name, module
    raise LeanError(f"cannot find the {n} transformer layers of {type(model).__name__}: use --student or --student-config")


def default_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers ending at the last one: 6 -> 3 gives [1, 3, 5], 6 -> 2 gives [2, 5].

    The top layer carries what fine-tuning taught the teacher; keeping it (with the classifier
    that reads it) makes the copied student right from the start.
    """
    if student_layers > teacher_layers:
        raise LeanError(f"--student-layers {student_layers} is more than the teacher's {teacher_layers} layers")
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


def student_from_teacher_layers(teacher, layer_map: list[int]):
    """A copy of `teacher` keeping only the layers in `layer_map` (embeddings, head and norms copied).

    Works for any model whose blocks sit in one ModuleList (BERT family, Llama, GPT-2). Student
    layer i is teacher layer layer_map[i]; with layer_map = all layers the student equals the teacher.
    """
    n = teacher.config.num_hidden_layers
    bad = [i for i in layer_map if not 0 <= i < n]
    if bad:
        raise LeanError(f"layer map {list(layer_map)} is out of range: the teacher has layers 0..{n - 1}")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layer_map)
    if getattr(config, "num_hidden_groups", None) is not None:
        return _shared_layers_student(teacher, config)
    prefix, _ = layer_list(teacher)
    for key, value in list(config.to_dict().items()):  # per-layer lists (layer_types) follow the map
        if "layer" in key and isinstance(value, list) and len(value) == n:
            setattr(config, key, [value[i] for i in layer_map])
    student = type(teacher)(config)
    teacher_state = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        source = key
        if key.startswith(prefix + "."):
            index, rest = key[len(prefix) + 1:].split(".", 1)
            source = f"{prefix}.{layer_map[int(index)]}.{rest}"
        state[key] = teacher_state[source].detach().clone()
    student.load_state_dict(state)
    return student.to(next(teacher.parameters()).dtype)


def _shared_layers_student(teacher, config):
    """ALBERT shares one set of layer weights across its depth (num_hidden_groups of them): with one
    group, a shallower student is the same weights run fewer times, so every weight is copied."""
    groups = config.num_hidden_groups
    if groups != 1:
        raise LeanError(f"{type(teacher).__name__} shares its layers in {groups} groups; lean makes shallower copies "
                        "of one-group models only: use --student-config num_hidden_layers=N,num_hidden_groups=1")
    student = type(teacher)(config)
    student.load_state_dict(teacher.state_dict())
    return student.to(next(teacher.parameters()).dtype)


def student_from_config(teacher, overrides: dict[str, Any], max_length: int | None = None):
    """A randomly initialised model of the teacher's class with some config values changed.

    When the hidden size or head count changes, dependent sizes follow (intermediate size scales
    with the width, head_dim = hidden / heads, key/value heads follow the heads for plain attention).
    """
    config = copy.deepcopy(teacher.config)
    t_hidden, t_heads = config.hidden_size, config.num_attention_heads
    check_student_overrides(config, overrides, max_length)
    for key, value in overrides.items():
        _check_override_type(key, value, getattr(config, key))
        setattr(config, key, value)
    hidden, heads = config.hidden_size, config.num_attention_heads
    if not isinstance(hidden, int) or not isinstance(heads, int) or hidden < 1 or heads < 1:
        raise LeanError(f"--student-config: hidden_size and num_attention_heads must be positive integers, got {hidden} and {heads}")
    if hidden % heads:
        raise LeanError(f"student hidden_size {hidden} does not divide into {heads} attention heads: "
                        "choose a hidden size that is a multiple of num_attention_heads")
    if config.num_hidden_layers < 1:
        raise LeanError("--student-config num_hidden_layers must be at least 1")
    if hidden != t_hidden and "intermediate_size" not in overrides and isinstance(getattr(config, "intermediate_size", None), int):
        config.intermediate_size = max(1, config.intermediate_size * hidden // t_hidden)
    if "head_dim" not in overrides and getattr(config, "head_dim", None) is not None and (hidden, heads) != (t_hidden, t_heads):
        config.head_dim = hidden // heads
    kv = getattr(config, "num_key_value_heads", None)
    if kv is not None and "num_key_value_heads" not in overrides:
        if teacher.config.num_key_value_heads == t_heads or heads % kv:
            config.num_key_value_heads = heads
    if kv is not None and heads % config.num_key_value_heads:
        raise LeanError(f"student num_attention_heads {heads} is not a multiple of num_key_value_heads "
                        f"{config.num_key_value_heads}: set num_key_value_heads too")
    try:
        return type(teacher)(config)
    except (ValueError, TypeError, KeyError, RuntimeError, AssertionError) as e:  # torch's and transformers' own checks
        raise LeanError(f"--student-config {','.join(map(str, overrides))}: the student's config builds no "
                        f"model ({first_line(e)}): give values like the teacher's") from None


def _check_override_type(key: str, value: Any, current: Any) -> None:
    """A --student-config value must have the type of the teacher's (num_hidden_layers=abc is a typo, not a config)."""
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise LeanError(f"--student-config {key} must be true or false, got {value!r}")
    elif isinstance(current, int):
        checks.integer(f"--student-config {key}", value)
    elif isinstance(current, float):
        checks.finite(f"--student-config {key}", value)


def uniform_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Which teacher layer each student layer learns from when the student is not a copy (TinyBERT's g(m))."""
    return [min(teacher_layers - 1, round((i + 1) * teacher_layers / student_layers) - 1) for i in range(student_layers)]


def same_vocabulary(teacher_tokenizer, student_tokenizer) -> bool:
    return teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab()


# ---- the step -------------------------------------------------------------------------------

def run(source: str, config: DistillConfig, out: Path) -> dict[str, Any]:
    """The step: build the student, train it against the teacher, evaluate, save into `out` (rank 0).

    What the student inherits from its teacher (task, split seed, columns, max length) comes from
    lean.lineage. A --checkpoint-dir is checked before any work and locked for the run, so a second
    run on it fails at once instead of deleting this one's checkpoints."""
    from lean.lineage import inherit
    from lean.locks import output_lock
    from lean.models import resolve_model
    from lean.steps import is_rank_zero

    inherited = inherit(resolve_model(source), {
        "task": config.task, "split_seed": config.split_seed, "text_column": config.text_column,
        "label_column": config.label_column, "max_length": config.max_length,
        "kind": None if config.kind == "auto" else config.kind})
    config = copy.copy(config)  # the manifest keeps the options as given; "inherited" says what was used
    config.max_length, config.split_seed = inherited.max_length, inherited.split_seed
    if not config.checkpoint_dir:
        result = _train(source, config, out, out / "_checkpoints", inherited)
    else:
        ckpt = check_checkpoint_location(config.checkpoint_dir, out, source)
        with output_lock(ckpt, "checkpoint directory") if is_rank_zero() else nullcontext():
            result = _train(source, config, out, check_checkpoint_location(ckpt, out, source), inherited)
    return {**result, "inherited": inherited.record()} if result else result


def _train(source: str, config: DistillConfig, out: Path, ckpt: Path, inherited) -> dict[str, Any]:
    from transformers import EarlyStoppingCallback, set_seed
    from transformers.trainer_callback import PrinterCallback

    from lean.distill_losses import (DistillationTrainer, DistillCollator, DistillProgressCallback, LossWeights,
                                     cache_teacher_logits, evaluate_student)
    from lean.models import load_config, load_tokenizer, manifest_hash, read_manifest, resolve_device, resolve_model

    device = resolve_device(config.device)
    teacher_path = resolve_model(source)
    teacher_manifest, teacher_hash = read_manifest(teacher_path), manifest_hash(teacher_path)
    kind = _kind(load_config(source, config.trust_remote_code), config.kind, source)
    if kind == "lm" and config.cache_teacher:
        raise LeanError("--cache-teacher stores one logit vector per example; a causal LM would need one per token "
                        "over the whole vocabulary: drop --cache-teacher")
    resuming = check_checkpoint_dir(ckpt, config, teacher_hash)
    task = _task(inherited, source)
    attn = "eager" if config.attention_weight > 0 else None  # attention maps need the eager implementation
    teacher, tokenizer = _load(source, kind, task, config, attn), load_tokenizer(source, config.trust_remote_code)
    if kind == "classification":
        _check_labels(teacher, task, source)
    set_seed(config.seed)
    student, layer_map, origin, hidden_pairs, attention_pairs = _prepare_student(teacher, tokenizer, kind, task, config, attn)
    t_layers, s_layers = teacher.config.num_hidden_layers, student.config.num_hidden_layers

    train = task.train.take(config.max_train_samples)
    validation, test = task.validation.take(config.max_eval_samples), task.test.take(config.max_eval_samples)
    train_data, val_data = _datasets(kind, tokenizer, student, train, validation, config.max_length)
    collator = DistillCollator(tokenizer, causal=kind == "lm")

    args = _training_args(config, kind, ckpt, device)
    rank0 = args.process_index == 0
    ckpt = _shared_checkpoint_dir(args, ckpt, config)
    if rank0 and not resuming:
        write_fingerprint(ckpt, config, teacher_hash)

    if config.cache_teacher:
        cache_teacher_logits(teacher, train_data, collator, args.device, config.batch_size)
    callbacks = [DistillProgressCallback(f"distill {t_layers}->{s_layers} layers")]
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))

    def compute_metrics(pred):
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=train_data, eval_dataset=val_data, data_collator=collator,
        compute_metrics=compute_metrics if kind == "classification" else None, callbacks=callbacks,
        teacher=None if config.cache_teacher else teacher, causal=kind == "lm",
        weights=LossWeights(config.temperature, config.alpha, config.hidden_weight, config.attention_weight),
        hidden_pairs=hidden_pairs, attention_pairs=attention_pairs,
    )
    trainer.remove_callback(PrinterCallback)
    resume_from = last_complete_checkpoint(ckpt) if resuming else None
    start_step = int(resume_from.name.split("-")[-1]) if resume_from else 0
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    trainer.accelerator.wait_for_everyone()  # nobody still reads the best checkpoint when rank 0 removes it
    if not rank0:
        return {}

    student = trainer.accelerator.unwrap_model(trainer.model).eval()
    if hasattr(student, "lean_distill_projections"):
        del student.lean_distill_projections  # training aids, not part of the student
    try:
        checks.check_finite_weights(student, "lower --lr, keep --temperature near 1 to 10, or lower the loss weights")
    except LeanError:
        remove_checkpoints(ckpt)  # a diverged run's checkpoints are nothing to resume from
        raise
    teacher.to(student.device).eval()
    metrics, teacher_metrics, teacher_source = evaluate_student(student, teacher, tokenizer, kind, task, config,
                                                                validation, test, teacher_manifest)
    student.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    remove_checkpoints(ckpt)
    return _report(source, config, kind, task, teacher, student, teacher_hash, (metrics, teacher_metrics, teacher_source),
                   (origin, layer_map, t_layers, s_layers), trainer, result, start_step, len(train), args.world_size, device)

def _datasets(kind: str, tokenizer, student, train, validation, max_length: int):
    """Tokenized train and validation sets: a classifier's keep the inputs the student takes (the teacher
    is fed the same batch, less what it lacks); a causal LM's are token streams."""
    from lean.distill_losses import LMTextDataset
    from lean.metrics import TextDataset

    if kind == "classification":
        return (TextDataset(tokenizer, train, max_length, student),
                TextDataset(tokenizer, validation, max_length, student))
    return LMTextDataset(tokenizer, train.texts, max_length), LMTextDataset(tokenizer, validation.texts, max_length)


def _prepare_student(teacher, tokenizer, kind: str, task, config: DistillConfig, attn):
    """The student, its layer map and origin, and which hidden states and attention maps the losses pair."""
    import torch

    from lean.models import align_pad_token

    student, layer_map, origin = _student(teacher, tokenizer, kind, task, config, attn)
    hidden_pairs = [(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(layer_map)]  # index 0: embeddings
    attention_pairs = list(enumerate(layer_map))
    if config.hidden_weight > 0 and student.config.hidden_size != teacher.config.hidden_size:
        # TinyBERT's learned W_h: student width -> teacher width, one per mapped hidden state
        student.lean_distill_projections = torch.nn.ModuleList(
            torch.nn.Linear(student.config.hidden_size, teacher.config.hidden_size) for _ in hidden_pairs)
    align_pad_token(student, tokenizer)
    return student, layer_map, origin, hidden_pairs, attention_pairs


def _training_args(config: DistillConfig, kind: str, ckpt: Path, device: str):
    """The Trainer's arguments: lean's conventions (lean.training) plus what distillation needs."""
    from lean.training import training_arguments

    steps = {"eval_strategy": "steps", "eval_steps": config.save_steps, "save_strategy": "steps",
             "save_steps": config.save_steps} if config.save_steps else {"eval_strategy": "epoch", "save_strategy": "epoch"}
    return training_arguments(
        str(ckpt), epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, weight_decay=config.weight_decay,
        warmup_ratio=config.warmup_ratio, seed=config.seed, device=device,
        gradient_accumulation_steps=config.grad_accum, **steps,
        load_best_model_at_end=True,  # the best student by validation metric is the one saved
        metric_for_best_model="accuracy" if kind == "classification" else "loss", greater_is_better=kind == "classification",
        prediction_loss_only=kind == "lm",  # an LM's eval logits (N, T, V) are too big to gather
        save_total_limit=2, remove_unused_columns=False,
        ddp_find_unused_parameters=False,  # every student weight (and projection) takes part in each loss
    )


def _shared_checkpoint_dir(args, ckpt: Path, config: DistillConfig) -> Path:
    """Under torchrun every process must write into one checkpoint directory: rank 0's temp output holds it."""
    if args.world_size > 1 and not config.checkpoint_dir:
        import torch.distributed as dist

        shared = [str(ckpt)]
        dist.broadcast_object_list(shared, src=0)
        ckpt = Path(shared[0])
        args.output_dir = str(ckpt)
    return ckpt


def _report(source, config: DistillConfig, kind: str, task, teacher, student, teacher_hash, evaluated, shape,
            trainer, result, start_step: int, samples: int, processes: int, device: str) -> dict[str, Any]:
    """What the manifest records of a distillation: metrics, retention, the student's shape, the losses."""
    from lean.models import environment

    metrics, teacher_metrics, teacher_source = evaluated
    origin, layer_map, t_layers, s_layers = shape
    metric = "accuracy" if kind == "classification" else "next_token_accuracy"
    log = trainer.state.log_history
    return {
        "task": task.describe() | {"distill_kind": kind},
        "metrics": metrics,
        "teacher": {"path": str(source), "manifest_hash": teacher_hash, "metrics": teacher_metrics,
                    "metrics_source": teacher_source, "layers": t_layers, "parameters": _count(teacher)},
        "retention": {"metric": metric, "split": "test",
                      "value": round(metrics["test"][metric] / max(teacher_metrics["test"][metric], 1e-12), 6)},
        "student": {"origin": origin, "layers": s_layers, "layer_map": layer_map, "hidden_size": student.config.hidden_size,
                    "parameters": _count(student)},
        "losses": {"weights": {"temperature": config.temperature, "alpha": config.alpha, "hidden": config.hidden_weight,
                               "attention": config.attention_weight},
                   "mean": trainer.mean_losses(),
                   "first": {k: v for k, v in next((e for e in log if "loss" in e), {}).items() if k.startswith("loss")},
                   "last": {k: v for k, v in next((e for e in reversed(log) if "loss" in e), {}).items() if k.startswith("loss")},
                   "cached_teacher": config.cache_teacher},
        "train": {"loss": round(result.training_loss, 5), "steps": result.global_step, "resumed_from_step": start_step,
                  "samples": samples, "processes": processes,
                  "best_validation": trainer.state.best_metric, "log": log},
        "environment": environment(device),
    }


def _kind(teacher_config, asked: str, source: str) -> str:
    """classification or lm, from the teacher's head; a teacher without the asked head is refused."""
    arch = " ".join(getattr(teacher_config, "architectures", None) or [])
    has = {"classification": "ForSequenceClassification" in arch,
           "lm": "ForCausalLM" in arch or "LMHeadModel" in arch}
    if asked == "auto":
        asked = "classification" if has["classification"] or not has["lm"] else "lm"
    if not has[asked]:
        what = "sequence-classification head" if asked == "classification" else "causal LM head"
        hint = "fine-tune it first with `lean finetune`" if asked == "classification" else "use a *ForCausalLM teacher"
        raise LeanError(f"teacher '{source}' has no {what} (architectures: {arch or 'none recorded'}): {hint}")
    return asked


def _task(inherited, source: str):
    if inherited.task is None:
        raise LeanError(f"teacher '{source}' records no task in its lean.json: pass --task")
    return inherited.load_task()


def _load(spec: str, kind: str, task, config: DistillConfig, attn: str | None, **kwargs):
    from lean.models import load_model

    if attn:
        kwargs["attn_implementation"] = attn
    return load_model(spec, kind, config.trust_remote_code, **kwargs).eval()


def _check_labels(teacher, task, source: str) -> None:
    n = teacher.config.num_labels
    names = [teacher.config.id2label[i] for i in range(n)] if n == len(teacher.config.id2label) else []
    if n != task.num_labels:
        raise LeanError(f"teacher '{source}' has {n} labels but the task '{task.name}' has {task.num_labels}: "
                        "distill on the task the teacher was fine-tuned on (--task)")
    default = [f"LABEL_{i}" for i in range(n)]
    if names and names != default and names != task.label_names:
        raise LeanError(f"teacher '{source}' labels {names} differ from the task's {task.label_names}: "
                        "distill on the task the teacher was fine-tuned on (--task)")


def _student(teacher, tokenizer, kind: str, task, config: DistillConfig, attn: str | None):
    """(student model, layer map, origin) from --student-layers/--layer-map, --student or --student-config."""
    from lean.models import load_config, load_tokenizer

    t_layers = teacher.config.num_hidden_layers
    if config.student:
        student_tok = load_tokenizer(config.student, config.trust_remote_code)
        s_config = load_config(config.student, config.trust_remote_code)
        if not same_vocabulary(tokenizer, student_tok) or s_config.vocab_size != teacher.config.vocab_size:
            raise LeanError(f"student '{config.student}' has a different vocabulary from the teacher "
                            f"({s_config.vocab_size} vs {teacher.config.vocab_size} tokens): the losses compare "
                            "token by token, so the student must use the teacher's tokenizer")
        extra = {}
        if kind == "classification":
            extra = dict(num_labels=task.num_labels, id2label=teacher.config.id2label, label2id=teacher.config.label2id,
                         ignore_mismatched_sizes=getattr(s_config, "num_labels", task.num_labels) != task.num_labels)
        student = _load(config.student, kind, task, config, attn, **extra)
        origin = {"kind": "model", "path": str(config.student)}
    elif config.student_config:
        student = student_from_config(teacher, config.student_config, config.max_length)
        origin = {"kind": "config", "overrides": config.student_config}
    else:
        layer_map = config.layer_map or default_layer_map(t_layers, config.student_layers)
        return student_from_teacher_layers(teacher, layer_map), list(layer_map), {"kind": "teacher-layers"}
    s_layers = student.config.num_hidden_layers
    layer_map = config.layer_map or uniform_layer_map(t_layers, s_layers)
    if len(layer_map) != s_layers or any(not 0 <= i < t_layers for i in layer_map):
        raise LeanError(f"layer map {layer_map} does not fit: it needs {s_layers} entries (one per student layer), "
                        f"each in 0..{t_layers - 1}")
    return student.train(), list(layer_map), origin


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


from lean.callable_module import make_callable  # noqa: E402  (see lean/callable_module.py)

make_callable(__name__)

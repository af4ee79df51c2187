"""Knowledge-distillation losses: soft targets (Hinton), hidden states (TinyBERT), attention (MiniLM).

Each function takes student and teacher tensors of the same shape (after projection where hidden
widths differ) and a mask of the positions that count, and returns a scalar. They work for
sequence classification (logits (B, C), no mask) and causal LM (logits (B, T, V), mask (B, T)).

The module also holds DistillationTrainer, the Trainer subclass whose compute_loss mixes them; it
imports transformers, so lean.distill imports it only inside the step.

    python -m pytest tests/test_distill.py -k loss -q
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from transformers import Trainer

from lean.progress import RichProgressCallback
from lean.metrics import forward_inputs


@dataclass(frozen=True)
class LossWeights:
    """How the losses mix: alpha * T^2 * KL(soft) + (1 - alpha) * hard + hidden * MSE + attention * KL(att)."""

    temperature: float = 2.0
    alpha: float = 0.5
    hidden: float = 0.0
    attention: float = 0.0

    @property
    def needs_hidden_states(self) -> bool:
        return self.hidden > 0

    @property
    def needs_attentions(self) -> bool:
        return self.attention > 0


def soft_target_kl(student_logits, teacher_logits, temperature: float, mask=None):
    """KL(teacher || student) of the temperature-softened distributions, times T^2 (Hinton et al., 2015).

    The T^2 factor keeps the gradient scale independent of T, so alpha means the same at every T.
    student_logits, teacher_logits: (B, C) or (B, T, V); mask: None or (B, T) with 1 where a token counts.
    Averaged over examples (classification) or over counted tokens (LM).
    """
    import torch.nn.functional as F

    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    # sum_c p_t * (log p_t - log p_s), per example or per token: (B,) or (B, T)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return _masked_mean(kl, mask) * (t * t)


def hard_label_loss(student_logits, labels, causal: bool):
    """Cross-entropy against the true labels; for causal LM, next-token CE with -100 ignored."""
    import torch.nn.functional as F

    if causal:
        # logits at position i predict token i + 1: (B, T-1, V) against (B, T-1)
        logits = student_logits[:, :-1].float()
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)
    return F.cross_entropy(student_logits.float(), labels)


def hidden_state_mse(student_hidden: Sequence, teacher_hidden: Sequence, pairs: Sequence[tuple[int, int]],
                     projections=None, mask=None):
    """Mean over `pairs` of the MSE between student and teacher hidden states (TinyBERT).

    student_hidden / teacher_hidden: the models' `hidden_states` tuples, index 0 the embeddings,
    each (B, T, H_s) / (B, T, H_t). pairs: (student index, teacher index) into those tuples.
    projections: None when H_s == H_t, else a sequence of Linear(H_s, H_t), one per pair.
    mask: (B, T) attention mask; padded positions do not count.
    """
    total = 0.0
    for k, (si, ti) in enumerate(pairs):
        s = student_hidden[si].float()
        if projections is not None:
            s = projections[k](s)
        sq = (s - teacher_hidden[ti].float()).pow(2).mean(-1)  # (B, T)
        total = total + _masked_mean(sq, mask)
    return total / max(len(pairs), 1)


def attention_kl(student_attn: Sequence, teacher_attn: Sequence, pairs: Sequence[tuple[int, int]], mask=None):
    """Mean over `pairs` of KL(teacher || student) between attention distributions (MiniLM, TinyBERT).

    student_attn / teacher_attn: the models' `attentions` tuples, each (B, heads, T, T), rows summing
    to 1 over keys. With equal head counts the KL is per head; otherwise the heads are averaged first
    (one distribution per query), since heads cannot be paired. mask: (B, T); padded queries do not count.
    """
    total = 0.0
    eps = 1e-12  # masked keys have probability 0 in both; eps keeps 0 * log 0 at 0
    for si, ti in pairs:
        s, t = student_attn[si].float(), teacher_attn[ti].float()
        if s.size(1) != t.size(1):
            s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
        kl = (t * ((t + eps).log() - (s + eps).log())).sum(-1)  # (B, heads, T)
        kl = kl.mean(1)  # (B, T)
        total = total + _masked_mean(kl, mask)
    return total / max(len(pairs), 1)


def _masked_mean(values, mask):
    """Mean of `values` (B,) or (B, T) over positions where mask (B, T) is 1 (all of them when mask is None)."""
    if mask is None or values.dim() == 1:
        return values.mean()
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


# ---- the trainer ----------------------------------------------------------------------------

class DistillationTrainer(Trainer):
    """transformers' Trainer whose training loss is the distillation mix against a frozen teacher.

    teacher: the teacher model (eval mode, no grad, moved to the student's device), or None when
    every batch carries cached `teacher_logits`. hidden_pairs / attention_pairs: (student, teacher)
    indices into the `hidden_states` / `attentions` tuples. Projections for hidden states of another
    width live on the student as `lean_distill_projections`, so checkpoints and DDP carry them.
    Evaluation uses the student alone, on its hard-label loss.
    """

    def __init__(self, *args, teacher=None, weights: LossWeights = LossWeights(), causal: bool = False,
                 hidden_pairs=(), attention_pairs=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)
            teacher.to(self.args.device)
        self.weights, self.causal = weights, causal
        self.hidden_pairs, self.attention_pairs = list(hidden_pairs), list(attention_pairs)
        self.model_accepts_loss_kwargs = False  # our losses are per-batch means: Trainer divides by grad_accum
        self._window: dict[str, Any] = {}  # loss parts summed since the last log (detached tensors)
        self._window_n = 0
        self.loss_totals: dict[str, float] = {}  # over the whole run, for the manifest
        self.loss_count = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        import torch

        inputs = dict(inputs)
        labels = inputs.pop("labels")
        cached = inputs.pop("teacher_logits", None)
        if not model.training:  # evaluation: the student on its own, against the true labels
            outputs = model(**inputs)
            loss = hard_label_loss(outputs.logits, labels, self.causal)
            return (loss, outputs) if return_outputs else loss

        w = self.weights
        outputs = model(**inputs, output_hidden_states=w.needs_hidden_states, output_attentions=w.needs_attentions)
        teacher_out = None
        if cached is None:
            with torch.no_grad(), self.accelerator.autocast():
                teacher_out = self.teacher(**forward_inputs(self.teacher, inputs), output_hidden_states=w.needs_hidden_states,
                                           output_attentions=w.needs_attentions)
            teacher_logits = teacher_out.logits
        else:
            teacher_logits = cached
        mask = inputs.get("attention_mask")
        parts = {
            "kd": soft_target_kl(outputs.logits, teacher_logits, w.temperature, mask if self.causal else None),
            "hard": hard_label_loss(outputs.logits, labels, self.causal),
        }
        loss = w.alpha * parts["kd"] + (1 - w.alpha) * parts["hard"]
        if w.needs_hidden_states:
            projections = getattr(self.accelerator.unwrap_model(model), "lean_distill_projections", None)
            parts["hidden"] = hidden_state_mse(outputs.hidden_states, teacher_out.hidden_states, self.hidden_pairs,
                                               projections, mask)
            loss = loss + w.hidden * parts["hidden"]
        if w.needs_attentions:
            parts["attention"] = attention_kl(outputs.attentions, teacher_out.attentions, self.attention_pairs, mask)
            loss = loss + w.attention * parts["attention"]
        for key, value in parts.items():
            self._window[key] = self._window.get(key, 0.0) + value.detach()
        self._window_n += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, start_time=None):
        """Add each loss part, averaged since the last log, beside Trainer's total `loss`."""
        if "loss" in logs and self._window_n:
            for key, value in self._window.items():
                mean = float(value) / self._window_n
                logs[f"loss_{key}"] = round(mean, 5)
                self.loss_totals[key] = self.loss_totals.get(key, 0.0) + float(value)
            self.loss_count += self._window_n
            self._window, self._window_n = {}, 0
        super().log(logs, start_time)

    def mean_losses(self) -> dict[str, float]:
        """Each loss part averaged over every logged training step (call after training)."""
        if self._window_n:  # steps after the last log
            for key, value in self._window.items():
                self.loss_totals[key] = self.loss_totals.get(key, 0.0) + float(value)
            self.loss_count += self._window_n
            self._window, self._window_n = {}, 0
        return {k: round(v / max(self.loss_count, 1), 5) for k, v in self.loss_totals.items()}


class DistillCollator:
    """Pads a batch; for causal LM sets labels = input_ids with padding ignored; stacks cached teacher logits."""

    def __init__(self, tokenizer, causal: bool):
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
        self.causal = causal

    def __call__(self, features):
        import torch

        teacher = [f["teacher_logits"] for f in features] if "teacher_logits" in features[0] else None
        batch = self.pad([{k: v for k, v in f.items() if k != "teacher_logits"} for f in features])
        if self.causal:
            labels = batch["input_ids"].clone()
            labels[batch["attention_mask"] == 0] = -100  # (B, T)
            batch["labels"] = labels
        if teacher is not None:
            batch["teacher_logits"] = torch.tensor(teacher, dtype=torch.float32)  # (B, C)
        return batch


class LMTextDataset:
    """The texts joined by eos into one token stream, cut into blocks of `max_length` tokens (the last one
    shorter), as lean.finetune trains LMs: every token of the corpus is trained on or scored, not just
    the first `max_length` of each text. Labels are made by DistillCollator."""

    def __init__(self, tokenizer, texts, max_length: int):
        eos = tokenizer.eos_token_id
        stream: list[int] = []
        for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
            stream.extend(ids + ([eos] if eos is not None else []))
        blocks = [stream[i:i + max_length] for i in range(0, len(stream), max_length)]
        self.features = [{"input_ids": b, "attention_mask": [1] * len(b)} for b in blocks if len(b) >= 2]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int):
        return self.features[i]


def lm_metrics(model, tokenizer, texts, max_length: int, batch_size: int = 16) -> dict[str, Any]:
    """Next-token loss (mean over predicted tokens), perplexity and next-token accuracy on `texts`."""
    import math

    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    collate = DistillCollator(tokenizer, causal=True)
    data = LMTextDataset(tokenizer, texts, max_length)
    loss_sum, correct, count = 0.0, 0, 0
    with torch.inference_mode():
        for i in range(0, len(data), batch_size):
            batch = collate([data[j] for j in range(i, min(i + batch_size, len(data)))]).to(device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
            target = batch["labels"][:, 1:]  # (B, T-1)
            keep = target != -100
            loss_sum += float(F.cross_entropy(logits[keep], target[keep], reduction="sum"))
            correct += int((logits.argmax(-1)[keep] == target[keep]).sum())
            count += int(keep.sum())
    loss = loss_sum / max(count, 1)
    return {"loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 50.0)), 4),
            "next_token_accuracy": round(correct / max(count, 1), 6), "tokens": count, "n": len(texts)}


class DistillProgressCallback(RichProgressCallback):
    """lean's rich progress bar with each loss part beside the total: `loss 0.41 (kd 0.30 hard 0.11 hidden 0.02)`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            parts = " ".join(f"{k[5:]} {v:.3f}" for k, v in logs.items() if k.startswith("loss_"))
            self.progress.update(self.task_id, loss=f"{logs['loss']:.4f} ({parts})")
        if "eval_accuracy" in logs:
            self.progress.console.print(f"  epoch {logs.get('epoch', 0):.2f}: validation accuracy {logs['eval_accuracy']:.4f}")
        elif "eval_loss" in logs:
            self.progress.console.print(f"  epoch {logs.get('epoch', 0):.2f}: validation loss {logs['eval_loss']:.4f}")


# ---- teacher cache and final evaluation ------------------------------------------------------

def cache_teacher_logits(teacher, dataset, collator, device, batch_size: int) -> None:
    """Run the teacher once over the training set and store each example's logits in it (C floats each)."""
    import torch

    teacher.to(device).eval()
    with torch.inference_mode():
        for i in range(0, len(dataset), max(batch_size, 32)):
            feats = dataset.features[i:i + max(batch_size, 32)]
            batch = collator([{k: v for k, v in f.items() if k != "labels"} for f in feats]).to(device)
            logits = teacher(**forward_inputs(teacher, batch)).logits
            for f, row in zip(feats, logits.float().cpu().tolist()):
                f["teacher_logits"] = row


def evaluate_student(student, teacher, tokenizer, kind, task, config, validation, test, teacher_manifest):
    """Student metrics on validation and test, and the teacher's test metrics (from its manifest when comparable)."""
    from lean.metrics import classification_metrics, predict_logits

    metrics, teacher_metrics = {}, {}
    for name, split in (("validation", validation), ("test", test)):
        if kind == "classification":
            logits = predict_logits(student, tokenizer, split.texts, config.max_length, batch_size=64)
            metrics[name] = classification_metrics(split.labels, logits.argmax(-1).tolist(), task.label_names)
        else:
            metrics[name] = lm_metrics(student, tokenizer, split.texts, config.max_length)
    recorded = (teacher_manifest.get("metrics") or {}).get("test") or {}
    t_cfg, t_task = teacher_manifest.get("config") or {}, teacher_manifest.get("task") or {}
    comparable = (kind == "classification" and "accuracy" in recorded and recorded.get("n") == len(test)
                  and t_task.get("name") == task.name and t_task.get("split_seed") == task.split_seed
                  and t_cfg.get("max_length") == config.max_length)
    if comparable:
        return metrics, {"test": recorded}, "manifest"
    if kind == "classification":
        logits = predict_logits(teacher, tokenizer, test.texts, config.max_length, batch_size=64)
        teacher_metrics["test"] = classification_metrics(test.labels, logits.argmax(-1).tolist(), task.label_names)
    else:
        teacher_metrics["test"] = lm_metrics(teacher, tokenizer, test.texts, config.max_length)
    return metrics, teacher_metrics, "evaluated"

"""Classification metrics and batched prediction, shared by every step and the harness."""

from __future__ import annotations

from typing import Any, Sequence


def forward_inputs(model, enc) -> dict[str, Any]:
    """The tokenizer's outputs that the model's forward names as inputs: a WordPiece tokenizer gives
    token_type_ids, which DistilBERT has no input for (transformers 4.57 raises on it, 5.x drops it in
    **kwargs; either way it is not the model's input)."""
    import inspect

    if callable(getattr(model, "get_base_model", None)):  # a PEFT wrapper passes **kwargs on to its base model
        model = model.get_base_model()
    params = inspect.signature(model.forward).parameters
    named = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return {k: v for k, v in enc.items() if k in named}


class TextDataset:
    """A torch-style dataset of tokenized texts with labels (tokenized once, padded by the collator).

    With `model`, only the inputs its forward takes are kept (see forward_inputs)."""

    def __init__(self, tokenizer, split, max_length: int, model=None):
        enc = tokenizer(list(split.texts), truncation=True, max_length=max_length)
        keys = list(forward_inputs(model, enc)) if model is not None else list(enc.keys())
        self.features = [{k: enc[k][i] for k in keys} | {"labels": split.labels[i]} for i in range(len(split.texts))]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


def predict_logits(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 32):
    """Logits for `texts` in batches, on the model's device, as a float32 CPU tensor."""
    import torch

    device = next(model.parameters()).device
    outputs = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[i:i + batch_size]), truncation=True, max_length=max_length,
                            padding=True, return_tensors="pt").to(device)
            outputs.append(model(**forward_inputs(model, enc)).logits.float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1 (sklearn's definitions)."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    labels = list(range(len(label_names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 6),
        "macro_f1": round(float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)), 6),
        "n": len(y_true),
        "per_class": {name: {"precision": round(float(p[i]), 6), "recall": round(float(r[i]), 6),
                             "f1": round(float(f[i]), 6), "support": int(s[i])}
                      for i, name in enumerate(label_names)},
    }

"""Classification metrics and batched prediction, shared by every step and the harness."""

from __future__ import annotations

from typing import Any, Sequence


class TextDataset:
    """A torch-style dataset of tokenized texts with labels (tokenized once, padded by the collator)."""

    def __init__(self, tokenizer, split, max_length: int):
        enc = tokenizer(list(split.texts), truncation=True, max_length=max_length)
        self.features = [{k: enc[k][i] for k in enc.keys()} | {"labels": split.labels[i]} for i in range(len(split.texts))]

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
            outputs.append(model(**enc).logits.float().cpu())
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

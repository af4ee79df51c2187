"""The tiny stand-ins `run.py --cpu-dry-run` uses: a random 2-layer BERT with the built-in MiniLM tokenizer,
a 50-article slice of BBC News, and benchmarks/gpu/suite.yaml shrunk to match (same variants, so the
CUDA rows are skipped with their reasons exactly as on a CPU-only machine)."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
LABELS = ["business", "entertainment", "politics", "sport", "tech"]


def write_small_task(path: Path, per_class: int = 10) -> Path:
    from lean.data import bbc_news_dir

    rows = []
    for label_dir in sorted(p for p in bbc_news_dir().iterdir() if p.is_dir()):
        for file in sorted(label_dir.glob("*.txt"))[:per_class]:
            text = file.read_bytes().decode("utf-8", errors="replace").strip()[:600]
            rows.append({"text": text, "label": "sport" if label_dir.name == "sports" else label_dir.name})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_tiny_base(path: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from lean.models import builtin_model_path

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(builtin_model_path("minilm-l6"))
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=len(LABELS),
                        id2label=dict(enumerate(LABELS)), label2id={name: i for i, name in enumerate(LABELS)})
    BertForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def prepare(work: Path) -> Path:
    """Writes the tiny base, task and suite under `work`; returns the suite's path."""
    suite = yaml.safe_load((HERE / "suite.yaml").read_text())
    suite["name"] = "gpu-quick-dry-run"
    suite["task"] = str(write_small_task(work / "bbc-small.csv"))
    suite["base"] = str(write_tiny_base(work / "tiny-bert"))
    suite["teacher"] = [{"finetune": {"epochs": 1, "max_length": 32}}]
    suite["measure"].update(batch_sizes=[1], seq_lengths=[16], warmup=1, repeats=2, min_repeats=1, timeout_s=60)
    path = work / "suite-dry-run.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path

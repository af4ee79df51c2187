"""Tiny models the export tests share: a plain HF classifier with its own label names and no lean.json,
and a GPT-2 whose tokenizer has no EOS (and no pad) token. Built from configs; nothing downloads."""

from __future__ import annotations

from pathlib import Path

from lean.export.exporters import EXPORTERS

HAS_OPTIMUM = EXPORTERS["optimum"].available()
NEEDS_OPTIMUM = "causal LM export with a KV cache needs optimum-onnx (pip install \"lean[optimum]\"), not installed here"
LABELS = ["negative", "neutral", "positive"]


def save_named_classifier(path: Path, labels: list[str] = LABELS, model_type: str = "bert") -> Path:
    """A random 2-layer classifier with the built-in MiniLM tokenizer, `labels` in its id2label, no lean.json."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from lean.models import builtin_model_path

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(builtin_model_path("minilm-l6"))
    shape = {"bert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
             "distilbert": dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64)}[model_type]
    config = AutoConfig.for_model(model_type, vocab_size=tok.vocab_size, num_labels=len(labels),
                                  id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
                                  **shape)
    AutoModelForSequenceClassification.from_config(config).eval().save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def save_gpt2_without_eos(path: Path) -> Path:
    """A random 2-layer GPT-2 whose byte-level BPE has no special tokens at all (no EOS, no pad)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from conftest import bbc_rows

    torch.manual_seed(0)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([r["text"] for r in bbc_rows(5)],
                            trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=256,
                        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    GPT2LMHeadModel(config).eval().save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path

"""Shared fixtures: tiny random models built from configs, and small slices of the real BBC data.

Nothing here downloads: the tokenizer of the BERT models is the built-in all-MiniLM-L6-v2 one,
the causal LMs get a byte-level BPE trained here on a few BBC articles.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers 5 draws one per model loaded or saved
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Subprocesses started from the repository root (`python -m lean.cli`, `python -c`) would find the checkout's
# kernels/ folder as a bare `kernels` before the Hub's package of that name, which transformers 5 requires
# and imports: they run as the installed `lean` command does, without the working directory on sys.path
# (Python 3.11's PYTHONSAFEPATH; lean's own measuring subprocesses do the same, lean.bench.launcher).
os.environ.setdefault("PYTHONSAFEPATH", "1")


def bbc_rows(per_class: int = 20) -> list[dict]:
    """The first `per_class` articles of each BBC class, as {"text", "label"} rows."""
    from lean.data import bbc_news_dir

    rows = []
    for label_dir in sorted(p for p in bbc_news_dir().iterdir() if p.is_dir()):
        for file in sorted(label_dir.glob("*.txt"))[:per_class]:
            rows.append({"text": file.read_bytes().decode("utf-8", errors="replace").strip(),
                         "label": "sport" if label_dir.name == "sports" else label_dir.name})
    return rows


@pytest.fixture(scope="session")
def bbc_csv(tmp_path_factory) -> Path:
    """A 100-row CSV task (20 articles per class) with columns text,label."""
    path = tmp_path_factory.mktemp("data") / "bbc_small.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(bbc_rows(20))
    return path


def save_tiny_bert(path: Path, num_layers: int = 4, hidden: int = 32, heads: int = 4, task: str | None = None) -> Path:
    """A random BertForSequenceClassification with the built-in MiniLM tokenizer and 5 BBC labels."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from lean.models import builtin_model_path, write_manifest

    torch.manual_seed(0)
    labels = ["business", "entertainment", "politics", "sport", "tech"]
    tok = AutoTokenizer.from_pretrained(builtin_model_path("minilm-l6"))
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=num_layers,
                        num_attention_heads=heads, intermediate_size=hidden * 2, max_position_embeddings=512,
                        num_labels=len(labels), id2label=dict(enumerate(labels)),
                        label2id={l: i for i, l in enumerate(labels)})
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    if task is not None:
        write_manifest(path, {"step": "test-fixture", "task": {"spec": task, "name": task, "kind": "classification",
                                                              "split_seed": 42, "label_names": labels}})
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 4-layer, 32-wide random BERT classifier directory (5 BBC labels, task bbc-news in lean.json)."""
    return save_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert", task="bbc-news")


def train_tiny_bpe(texts: list[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on `texts`, wrapped for transformers (no pad token, like Llama's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def save_tiny_lm(path: Path, arch: str = "llama") -> Path:
    """A random 2-layer causal LM (llama with GQA, or gpt2) with a BPE trained on BBC text."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = train_tiny_bpe([r["text"] for r in bbc_rows(10)])
    if arch == "llama":
        config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        model = LlamaForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=256,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(arch)
    model.eval().save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("models") / "tiny-gpt2", "gpt2")


def run_cli(*args: str, env: dict | None = None, cwd: str | None = None):
    """Run `lean ARGS` in a subprocess, as a user would; returns the CompletedProcess."""
    import subprocess
    import sys

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "lean.cli", *args], capture_output=True, text=True, env=full_env, cwd=cwd)


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def invoke(*args: str) -> Result:
    """Run `lean ARGS` in this process through lean.cli.main (fast: no fresh interpreter); exit code and output."""
    import contextlib
    import io
    import sys

    from lean.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["lean", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
    return Result(code, out.getvalue(), err.getvalue())


def pytest_runtest_setup(item):
    """One skip, with its reason, for every test marked `optimum` where optimum-onnx is absent (the transformers 5 stack)."""
    import importlib.util

    if not item.get_closest_marker("optimum"):
        return
    try:
        installed = importlib.util.find_spec("optimum.onnxruntime") is not None
    except ImportError:  # no `optimum` package at all
        installed = False
    if not installed:
        pytest.skip("needs optimum-onnx, which pins transformers<4.58: pip install -e '.[optimum]'")

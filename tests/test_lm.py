"""Causal LMs: corpora, tokenizer training, sliding-window perplexity, generation timing, training from a config."""

from __future__ import annotations

import json
import math

import pytest
from conftest import invoke

from lean.data import load_task
from lean.errors import LeanError


def test_bbc_news_lm_has_the_split_of_bbc_news():
    lm, cls = load_task("bbc-news-lm"), load_task("bbc-news")
    assert lm.kind == "lm" and lm.test.texts == cls.test.texts and lm.train.texts == cls.train.texts


def test_txt_corpus_documents_and_empty_corpus(tmp_path):
    (tmp_path / "c.txt").write_text("\n\n".join(f"document {i} has words" for i in range(10)))
    task = load_task(str(tmp_path / "c.txt"))
    assert task.kind == "lm" and len(task.train) + len(task.validation) + len(task.test) == 10
    assert set(task.test.texts).isdisjoint(task.train.texts)
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(LeanError, match="no text"):
        load_task(str(tmp_path / "empty.txt"))


def test_jsonl_corpus_with_lm_kind(tmp_path):
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"body": f"text {i}"}) for i in range(10)))
    with pytest.raises(LeanError, match="columns are: body"):
        load_task(str(tmp_path / "c.jsonl"), kind="lm")
    assert load_task(str(tmp_path / "c.jsonl"), text_column="body", kind="lm").kind == "lm"


def test_perplexity_matches_a_single_full_pass_and_is_batch_invariant(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lean.lm import perplexity

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    texts = ["Shares in the bank rose after its profits beat forecasts.", "The striker scored twice in the cup final."] * 2
    ids = [i for x in tok(texts, add_special_tokens=False)["input_ids"] for i in x + [tok.eos_token_id]]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    expected = math.exp(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item())
    whole = perplexity(model, tok, texts, window=200, stride=200)
    assert whole["tokens"] == len(ids) - 1
    assert whole["perplexity"] == pytest.approx(expected, rel=1e-4)
    # windows shorter than the corpus: every token still scored once, batching changes nothing
    one = perplexity(model, tok, texts, window=16, stride=8, batch_size=1)
    many = perplexity(model, tok, texts, window=16, stride=8, batch_size=5)
    assert one["tokens"] == many["tokens"] == len(ids) - 1
    assert one["perplexity"] == pytest.approx(many["perplexity"], rel=1e-5)
    with pytest.raises(LeanError, match="exceeds the model's context"):
        perplexity(model, tok, texts, window=10_000, stride=10)


def test_generation_speed_reports_positive_rates(tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lean.lm import generation_speed

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    tok.pad_token = tok.eos_token
    prompts = load_task("bbc-news-lm").test.texts[:8]
    r = generation_speed(model, tok, prompts, batch_size=2, new_tokens=5, prompt_tokens=16, repeats=1)
    assert r["ttft_ms"] > 0 and r["decode_tokens_per_s"] > 0 and r["batch_size"] == 2


def test_train_llama_from_config_with_its_own_tokenizer(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "lm"
    res = invoke("finetune", "--task", "bbc-news-lm", "--init-config", "llama-tiny", "--epochs", "1",
                 "--max-train-samples", "40", "--max-eval-samples", "6", "--max-length", "64", "--vocab-size", "600", "-o", str(out))
    assert res.returncode == 0, res.stderr
    m = json.loads((out / "lean.json").read_text())
    assert m["model"]["init_config"] == "llama-tiny" and m["model"]["vocab_size"] == 600
    test = m["metrics"]["test"]
    # a trained model beats the uniform guess over its vocabulary
    assert 1 < test["perplexity"] < 600 and test["window"] == 64 and test["stride"] == 32
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_key_value_heads == 2 and tok.pad_token is not None


def test_bad_lm_inputs(tmp_path):
    res = invoke("finetune", "--task", "bbc-news-lm", "--init-config", "llama-huge", "-o", str(tmp_path / "x"))
    assert res.returncode == 2 and "llama-tiny" in res.stderr
    res = invoke("finetune", "--task", "bbc-news", "--init-config", "llama-tiny", "-o", str(tmp_path / "x"))
    assert res.returncode == 2 and "language-modelling task" in res.stderr
    res = invoke("finetune", "--task", "bbc-news", "-o", str(tmp_path / "x"))
    assert res.returncode == 2 and "--init-config" in res.stderr
    assert not (tmp_path / "x").exists()


def test_perplexity_of_a_tokenizer_without_eos_or_pad(tmp_path):
    """Documents are joined end to end and padding uses id 0; the result is the full pass's perplexity."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from export_models import save_gpt2_without_eos
    from lean.lm import BlockDataset, perplexity

    source = save_gpt2_without_eos(tmp_path / "gpt2")
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    tok = AutoTokenizer.from_pretrained(source)
    assert tok.eos_token_id is None and tok.pad_token_id is None
    texts = ["Shares in the bank rose after its profits beat forecasts.", "The striker scored twice."]
    ids = [i for x in tok(texts, add_special_tokens=False)["input_ids"] for i in x]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    expected = math.exp(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item())
    whole = perplexity(model, tok, texts, window=200, stride=200)
    assert whole["tokens"] == len(ids) - 1 and whole["perplexity"] == pytest.approx(expected, rel=1e-4)
    batched = perplexity(model, tok, texts, window=8, stride=4, batch_size=3)  # padded last window
    assert batched["tokens"] == len(ids) - 1
    assert BlockDataset(tok, texts, 4).blocks[0] == ids[:4]

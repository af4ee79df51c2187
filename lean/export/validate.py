"""Validation of an exported directory against the PyTorch model, and the gates that decide if it is kept.

Inputs are the task's test texts when there is a task, else lean's shipped sample texts
(`lean.samples`): then only agreement with PyTorch is checked (logits, top-1, next tokens,
perplexity ratio on the same texts), never accuracy.
"""

from __future__ import annotations

from typing import Any

from lean.errors import LeanError


def _short(text: str, words: int = 6) -> str:
    return " ".join(text.split()[:words])


def validate_classifier(model, tokenizer, onnx_model, texts: list[str], max_length: int, config,
                        task=None) -> dict[str, Any]:
    """Logits on identical feeds (several batch sizes and lengths, short texts padded), then every text in
    length-sorted batches; test metrics of both models when `task` is given (texts are its test split)."""
    import numpy as np
    import torch

    cases, max_diff, token_mismatch = [], 0.0, 0
    for batch, length in ((1, max_length), (4, 32), (8, max_length), (16, 16)):
        batch_texts = [t if i % 2 == 0 else _short(t) for i, t in enumerate(texts[:batch])]  # every other one padded
        feed = onnx_model.encode(batch_texts, max_length=length)
        hf_ids = tokenizer(batch_texts, truncation=True, max_length=length, padding=True)["input_ids"]
        token_mismatch += int(hf_ids != feed["input_ids"].tolist())
        with torch.inference_mode():
            ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.float().numpy()
        diff = float(np.abs(onnx_model.run(feed) - ref).max())
        max_diff = max(max_diff, diff)
        cases.append({"batch_size": len(batch_texts), "max_length": length,
                      "padded": bool((feed["attention_mask"] == 0).any()), "max_abs_diff": diff})

    ref_logits = _pytorch_logits(model, tokenizer, texts, max_length)
    onnx_logits = onnx_model.logits(texts, batch_size=32, max_length=max_length)
    all_diff = float(np.abs(onnx_logits - ref_logits).max())
    ref_pred, onnx_pred = ref_logits.argmax(-1), onnx_logits.argmax(-1)
    report = {
        "validation": {
            "max_abs_diff": max(max_diff, all_diff),
            "agreement": round(float((ref_pred == onnx_pred).mean()), 6),
            "disagreements": int((ref_pred != onnx_pred).sum()),
            "n": len(texts),
            "tokenizer_mismatches": token_mismatch,
            "cases": cases + [{"batch_size": 32, "max_length": max_length, "texts": "test" if task else "samples",
                               "n": len(texts), "max_abs_diff": all_diff}],
            "provider": onnx_model.provider,
            "threads": onnx_model.threads,
            "atol": config.atol,
        },
    }
    if task is not None:
        from lean.metrics import classification_metrics

        remap = _label_remap(model.config, task.label_names)
        labels = task.test.take(config.max_eval_samples).labels
        report["metrics"] = {"test": classification_metrics(labels, [remap[i] for i in onnx_pred], task.label_names)}
        report["source_metrics"] = {"test": classification_metrics(labels, [remap[i] for i in ref_pred], task.label_names)}
    return report


def _pytorch_logits(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 32):
    """(N, num_labels) PyTorch logits, passing only the inputs the model's forward takes (a shared BERT
    tokenizer gives token_type_ids that DistilBERT has no use for)."""
    import numpy as np
    import torch

    from lean.metrics import forward_inputs

    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt")
            out.append(model(**forward_inputs(model, enc)).logits.float().numpy())
    return np.concatenate(out)


def _label_remap(hf_config, label_names: list[str]) -> list[int]:
    """Model output index -> task label index: by name when the model names the task's labels, else identity."""
    id2label = {int(k): v for k, v in (hf_config.id2label or {}).items()}
    names = [id2label.get(i) for i in range(hf_config.num_labels)]
    if set(names) == set(label_names):
        return [label_names.index(n) for n in names]
    return list(range(hf_config.num_labels))


def validate_lm(model, tokenizer, onnx_model, texts: list[str], max_length: int, config, split: str) -> dict[str, Any]:
    """Logits on left-padded prompts (first step, empty cache), greedy generations with the cache vs
    `generate`, and sliding-window perplexity of the texts' first tokens in both runtimes."""
    from lean.lm import onnx_perplexity, perplexity, token_stream

    n_prompts = min(8, len(texts), config.max_eval_samples or 8)
    prompts = [_short(t, 4 + 3 * (i % 4)) for i, t in enumerate(texts[:n_prompts])]  # 4..13 words
    report = _lm_prompt_logits(model, onnx_model, prompts)
    report.update(_lm_generations(model, tokenizer, onnx_model, prompts))

    # 4k tokens in windows of the trained context moved by half of it: ~64 windows, seconds on a CPU
    max_tokens = 4096 if config.max_eval_samples is None else 512
    window = min(max_length, getattr(model.config, "max_position_embeddings", None) or max_length)
    ref_ppl = perplexity(model, tokenizer, texts, window=window, stride=max(1, window // 2), max_tokens=max_tokens,
                         batch_size=8)
    onnx_ppl = onnx_perplexity(onnx_model, token_stream(tokenizer, texts, max_tokens), window, max(1, window // 2), 8)
    report["perplexity"] = {"pytorch": ref_ppl["perplexity"], "onnx": onnx_ppl["perplexity"],
                            "ratio": round(onnx_ppl["perplexity"] / ref_ppl["perplexity"], 6),
                            "tokens": ref_ppl["tokens"], "window": window, "split": split}
    report.update({"provider": onnx_model.provider, "threads": onnx_model.threads, "atol": config.atol})
    return {"validation": report}


def _lm_prompt_logits(model, onnx_model, prompts: list[str]) -> dict[str, Any]:
    """First-step logits of both runtimes on real (unpadded) positions, with position ids over real tokens."""
    import numpy as np
    import torch

    cases, max_diff, agree, total = [], 0.0, 0, 0
    for batch in (1, 4):
        feed = onnx_model.encode(prompts[:batch], max_length=64, padding_side="left")
        mask = feed["attention_mask"]
        positions = np.cumsum(mask, axis=1) - 1
        positions[mask == 0] = 1
        with torch.inference_mode():
            ref = model(input_ids=torch.from_numpy(feed["input_ids"]), attention_mask=torch.from_numpy(mask),
                        position_ids=torch.from_numpy(positions)).logits.float().numpy()
        got = onnx_model.run(feed)
        real = mask.astype(bool)  # compare where tokens are real: padded positions are never read
        diff = float(np.abs(got[real] - ref[real]).max())
        max_diff = max(max_diff, diff)
        agree += int((got[real].argmax(-1) == ref[real].argmax(-1)).sum())
        total += int(real.sum())
        cases.append({"batch_size": batch, "tokens": int(mask.shape[1]), "padded": bool((mask == 0).any()),
                      "max_abs_diff": diff})
    return {"max_abs_diff": max_diff, "agreement": round(agree / max(total, 1), 6),  # next-token argmax
            "disagreements": total - agree, "n": total, "cases": cases}


def _lm_generations(model, tokenizer, onnx_model, prompts: list[str], new_tokens: int = 16) -> dict[str, Any]:
    """Greedy tokens through onnxruntime's KV cache against PyTorch's `generate`, stopped at EOS if there is one."""
    import torch

    enc = onnx_model.encode(prompts, max_length=64, padding_side="left")
    eos = onnx_model.eos_id
    with torch.inference_mode():
        out = model.generate(input_ids=torch.from_numpy(enc["input_ids"]),
                             attention_mask=torch.from_numpy(enc["attention_mask"]), max_new_tokens=new_tokens,
                             do_sample=False, num_beams=1, pad_token_id=onnx_model.pad_id, eos_token_id=eos)
    reference = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        reference.append(row[:row.index(eos)] if eos is not None and eos in row else row)
    generated = onnx_model.generate_ids(prompts, max_new_tokens=new_tokens, batch_size=len(prompts))
    same = [a == b for a, b in zip(generated, reference)]
    return {"generation_agreement": round(sum(same) / len(same), 6),
            "generation": {"prompts": len(prompts), "max_new_tokens": new_tokens, "identical": int(sum(same))}}


def gate(report: dict[str, Any], config, kind: str) -> None:
    """Raise (so nothing is written) when the export is not faithful enough; the message says by how much."""
    v = report["validation"]
    if v.get("tokenizer_mismatches"):
        raise LeanError(f"export failed validation: the exported tokenizer.json encodes {v['tokenizer_mismatches']} "
                        "validation batches differently from the model's transformers tokenizer")
    problems = []
    if config.precision == "fp32":
        if v["max_abs_diff"] > config.atol:
            problems.append(f"logits differ from PyTorch by up to {v['max_abs_diff']:.2e} (atol {config.atol:g})")
        if v["disagreements"]:
            problems.append(f"{v['disagreements']} of {v['n']} predictions disagree")
        if kind == "lm" and v["generation_agreement"] < 1:
            g = v["generation"]
            problems.append(f"{g['prompts'] - g['identical']} of {g['prompts']} greedy generations differ from generate()")
        if problems:
            hint = " (--optimize O3 approximates GELU: use O2 for exact fp32)" if config.optimize == "O3" else ""
            raise LeanError(f"export failed validation: {'; '.join(problems)}{hint}; raise --atol only if that is acceptable")
        return
    if kind == "lm":
        ppl = v["perplexity"]
        if ppl["ratio"] > config.max_perplexity_ratio:
            problems.append(f"{config.precision} {ppl.get('split', 'test')} perplexity {ppl['onnx']:.3f} is "
                            f"{ppl['ratio']:.3f}x PyTorch's {ppl['pytorch']:.3f} (at most {config.max_perplexity_ratio:g}x allowed)")
    elif v["agreement"] < config.min_agreement:
        problems.append(f"{config.precision} agrees with PyTorch on {v['agreement']:.2%} of predictions "
                        f"(at least {config.min_agreement:.0%} required)")
    if kind == "classification" and report.get("metrics"):  # accuracy is gated only where a task gives labels
        ours, source = report["metrics"]["test"], report["source_metrics"]["test"]
        for key in ("accuracy", "macro_f1"):
            drop = 100 * (source[key] - ours[key])
            if drop > config.max_metric_drop:
                problems.append(f"test {key} {100 * ours[key]:.2f} is {drop:.2f} points below the source's "
                                f"{100 * source[key]:.2f} (at most {config.max_metric_drop:g} allowed)")
    if problems:
        raise LeanError(f"export failed validation: {'; '.join(problems)}")

"""The model families lean is tested on, as one table, and the support matrix rendered from it.

Each family is a tiny random model (2 layers, 32 wide) built from its config with a tokenizer of its
kind trained here on a few BBC articles (nothing downloads). tests/test_families.py pushes every family
through every step and asserts the outcome this table states for the stack it runs on; docs/support.md
is this table rendered, and a test holds the two equal, so the docs say only what the tests check:

    python tests/families.py > docs/support.md          # after changing the table
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

LABELS = ["business", "entertainment", "politics", "sport", "tech"]
QUANTIZE_METHODS = ("dynamic-int8", "bnb-int8", "bnb-nf4", "bnb-fp4")
STEPS = ("finetune", "distill", *(f"quantize {m}" for m in QUANTIZE_METHODS), "export", "export int8", "predict",
         "bench")
STACKS = ("4.57", "5.x")  # transformers 4.57 with optimum-onnx, and the newest 5.x without it
NEEDS_OPTIMUM = "refused: needs optimum"  # the one-line refusal of the torch exporter for causal LMs


@dataclass(frozen=True)
class Family:
    model_type: str
    kind: str  # "classification" (an encoder classifier) or "lm" (a causal LM)
    tokenizer: str  # wordpiece (the built-in MiniLM one), bpe (byte-level) or sentencepiece (Unigram + Metaspace)
    shape: dict
    quirks: str  # what this family exercises beyond the others
    eos: bool = True  # the tokenizer has an EOS token
    extra_special: tuple[str, ...] = ()  # tokens the real checkpoints carry in their vocabulary
    refused: dict = field(default_factory=dict)  # (stack, step) -> the outcome when it is not "yes"

    def outcome(self, stack: str, step: str) -> str:
        return self.refused.get((stack, step), "yes")


_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
_DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
_LM_EXPORT_5X = {("5.x", "export"): NEEDS_OPTIMUM, ("5.x", "export int8"): NEEDS_OPTIMUM,
                 ("5.x", "predict"): NEEDS_OPTIMUM}  # lean predict runs ONNX directories only

FAMILIES: dict[str, Family] = {f.model_type: f for f in [
    Family("bert", "classification", "wordpiece", _ENCODER, "token_type_ids"),
    Family("distilbert", "classification", "wordpiece", dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64),
           "no token_type_ids input (a BERT tokenizer gives them)"),
    Family("electra", "classification", "wordpiece", dict(_ENCODER, embedding_size=16),
           "embeddings narrower than the layers"),
    Family("roberta", "classification", "bpe", dict(_ENCODER, type_vocab_size=1, max_position_embeddings=514),
           "no token_type_ids, position ids offset by the pad id"),
    Family("xlm-roberta", "classification", "sentencepiece",
           dict(_ENCODER, type_vocab_size=1, max_position_embeddings=514), "SentencePiece vocabulary"),
    Family("albert", "classification", "sentencepiece", dict(_ENCODER, embedding_size=16),
           "one set of layer weights shared across the depth"),
    Family("deberta-v2", "classification", "sentencepiece", dict(_ENCODER, type_vocab_size=0),
           "relative-position attention"),
    Family("mpnet", "classification", "bpe", _ENCODER, "relative-position bias, no token_type_ids"),
    Family("llama", "lm", "bpe", dict(_DECODER, num_key_value_heads=2), "grouped-query attention, no pad token",
           refused=_LM_EXPORT_5X),
    Family("qwen2", "lm", "bpe", dict(_DECODER, num_key_value_heads=2, tie_word_embeddings=True),
           "tied embeddings; transformers 5's Qwen2 tokenizer brings a pad token of its own",
           extra_special=("<|endoftext|>",), refused=_LM_EXPORT_5X),
    Family("gpt2", "lm", "bpe", dict(n_embd=32, n_layer=2, n_head=4), "no EOS and no pad token, tied embeddings",
           eos=False, refused=_LM_EXPORT_5X),
    Family("mistral", "lm", "bpe", dict(_DECODER, num_key_value_heads=2), "grouped-query attention",
           refused=_LM_EXPORT_5X),
    Family("phi3", "lm", "bpe", dict(_DECODER, num_key_value_heads=2), "fused qkv and gate-up projections",
           refused=_LM_EXPORT_5X),
    Family("gemma", "lm", "sentencepiece", dict(_DECODER, num_key_value_heads=1, head_dim=8),
           "SentencePiece vocabulary, tied embeddings, multi-query attention", refused=_LM_EXPORT_5X),
    Family("gpt_neox", "lm", "bpe", _DECODER, "parallel attention and MLP, partial rotary",
           refused=_LM_EXPORT_5X),
    Family("opt", "lm", "bpe", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                                    word_embed_proj_dim=32), "learned positions offset by 2",
           refused=_LM_EXPORT_5X),
]}
ENCODERS = [n for n, f in FAMILIES.items() if f.kind == "classification"]
DECODERS = [n for n, f in FAMILIES.items() if f.kind == "lm"]


# ---- building the tiny models ------------------------------------------------------------------

def _trained_tokenizer(kind: str, texts: list[str], specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind == "sentencepiece":  # what a SentencePiece model becomes in tokenizer.json
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=specials, unk_token="<unk>",
                                          show_progress=False)
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def _encoder_tokenizer(family: Family, texts: list[str]):
    from tokenizers import processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from lean.models import builtin_model_path

    if family.tokenizer == "wordpiece":
        return AutoTokenizer.from_pretrained(builtin_model_path("minilm-l6"))
    tok = _trained_tokenizer(family.tokenizer, texts, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>",
                                   model_input_names=["input_ids", "attention_mask"])


def _decoder_tokenizer(family: Family, texts: list[str]):
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<unk>", *family.extra_special] if family.eos else ["<unk>"]
    tok = _trained_tokenizer(family.tokenizer, texts, specials)
    ends = dict(bos_token="<s>", eos_token="</s>") if family.eos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **ends)  # no pad token, as in Llama


def save_family_model(name: str, path: Path, texts: list[str]) -> Path:
    """A random tiny model of family `name` (5 BBC labels in id2label for a classifier) with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    family = FAMILIES[name]
    torch.manual_seed(0)
    if family.kind == "classification":
        tok = _encoder_tokenizer(family, texts)
        ids = {} if family.tokenizer == "wordpiece" else dict(pad_token_id=tok.pad_token_id,
                                                              bos_token_id=tok.bos_token_id,
                                                              eos_token_id=tok.eos_token_id)
        config = AutoConfig.for_model(name, vocab_size=len(tok), num_labels=len(LABELS),
                                      id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
                                      **ids, **family.shape)
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        tok = _decoder_tokenizer(family, texts)
        config = AutoConfig.for_model(name, vocab_size=len(tok), max_position_embeddings=256,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=None, **family.shape)
        model = AutoModelForCausalLM.from_config(config)
    model.eval().save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


# ---- the support matrix ------------------------------------------------------------------------

def _cell(family: Family, step: str) -> str:
    outcomes = {stack: family.outcome(stack, step) for stack in STACKS}
    if len(set(outcomes.values())) == 1:
        return outcomes[STACKS[0]]
    return "; ".join(f"{stack}: {outcome}" for stack, outcome in outcomes.items())


def render() -> str:
    """docs/support.md: every family x step on each stack, as tests/test_families.py asserts it."""
    head = ["family", "kind", "tokenizer", *STEPS, "CUDA"]
    lines = [
        "# Support matrix",
        "",
        "Generated from `tests/families.py` (`python tests/families.py > docs/support.md`); every cell is",
        "asserted by `tests/test_families.py` on a tiny random model of the family (2 layers, 32 wide, a",
        "tokenizer of its kind trained on BBC text), on the CPU, on both stacks CI runs: transformers 4.57",
        "with optimum-onnx, and the newest transformers 5.x without it. \"yes\" means the step ran and its",
        "output was checked (a trained model that loads and scores; quantized layers in place; an ONNX",
        "model validated against PyTorch; labels from the model's own id2label; a bench row with its",
        "accuracy or perplexity and latency). \"refused\" is the one-line error lean gives instead.",
        "",
        "Export uses optimum-onnx where it is installed and `torch.onnx` (dynamo) with onnxruntime's",
        "optimizer and quantizer elsewhere; causal LMs with a KV cache need optimum-onnx. Predict runs the",
        "exported model with onnxruntime alone. Bench is `lean bench DIR ...` over the family's teacher.",
        "CUDA: not yet run on a GPU for these families (the GPU script, `benchmarks/gpu/`, covers BERT).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, family in FAMILIES.items():
        cells = [f"`{name}`", "classifier" if family.kind == "classification" else "causal LM",
                 family.tokenizer, *(_cell(family, step) for step in STEPS), "not run"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "What each family adds to the others:", ""]
    lines += [f"- `{name}`: {family.quirks}" for name, family in FAMILIES.items()]
    return "\n".join(lines) + "\n"


def _short(family: Family, steps: tuple[str, ...]) -> str:
    """One README cell for `steps`: yes on both stacks, else which stack and what instead."""
    outcomes = {stack: {family.outcome(stack, step) for step in steps} for stack in STACKS}
    if all(o == {"yes"} for o in outcomes.values()):
        return "yes"
    where = {"4.57": "with optimum-onnx (4.57)", "5.x": "on 5.x"}
    return ", ".join(where[stack] for stack, o in outcomes.items() if o == {"yes"}) or "no"


README_COLUMNS = {"finetune": ("finetune",), "distill": ("distill",),
                  "quantize (4 methods)": tuple(s for s in STEPS if s.startswith("quantize")),
                  "export fp32 / int8": ("export", "export int8"), "predict": ("predict",), "bench": ("bench",)}


def render_readme_table() -> str:
    """The README's compact matrix: families with the same cells share a row."""
    rows: dict[tuple[str, ...], list[str]] = {}
    for name, family in FAMILIES.items():
        kind = "classifier" if family.kind == "classification" else "causal LM"
        rows.setdefault((kind, *(_short(family, steps) for steps in README_COLUMNS.values())), []).append(name)
    head = ["families", "kind", *README_COLUMNS, "CUDA"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (kind, *cells), names in rows.items():
        lines.append("| " + " | ".join([", ".join(names), kind, *cells, "not run yet"]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")

"""Run transformers models through lean's fused Triton attention (`lean.kernels.flash_attention`).

    import lean.attention
    lean.attention.register()   # adds "lean" to transformers' attention interface
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="lean")  # Llama, Qwen2, GPT-2...
    model = lean.attention.use_lean_attention(model)  # any model above, and BERT/RoBERTa/DistilBERT

Two kinds of model exist:
- those that dispatch through the attention interface (`_supports_attention_backend`: Llama,
  Qwen2, GPT-2, ... and, from transformers 5, BERT, RoBERTa and DistilBERT). `register()` adds a
  "lean" attention function and a "lean" mask function; the mask function hands the kernel a
  (batch, k_len) padding mask instead of a 4-d mask whenever the pattern is plain causal
  (bottom-right aligned, as with a KV cache) or bidirectional plus padding.
- in transformers 4.57, BERT, RoBERTa, DistilBERT and their copies pick from their own eager/sdpa
  classes (an unknown name raises KeyError), so `use_lean_attention` swaps their self-attention
  modules' class for a subclass whose forward calls the kernel.

Whenever the kernel cannot give the same answer (no CUDA and no TRITON_INTERPRET, head_dim over
256, attention dropout in training, head_mask, output_attentions, sliding windows, masks that are
not causal+padding...), the call goes to the model's own sdpa/eager path and the reason is logged
once on the "lean.attention" logger.
"""

from __future__ import annotations

import inspect
import logging
import sys

logger = logging.getLogger("lean.attention")

ATTENTION_NAME = "lean"

_logged_reasons: set[str] = set()
_lean_classes: dict[type, type] = {}


def _log_fallback(reason: str) -> None:
    message = f"lean attention falls back to the model's own attention: {reason}"
    if reason not in _logged_reasons:
        _logged_reasons.add(reason)
        logger.warning(message)
    else:
        logger.debug(message)


def _flash():
    # Imported on first use: lean.kernels pulls in triton.
    from lean.kernels import flash_attention as module_function
    from lean.kernels.flash_attention import unsupported_reason

    return module_function, unsupported_reason


# ---------------------------------------------------------------------------------------------
# Masks


def key_padding_from_mask(mask, batch: int, q_len: int, k_len: int):
    """(B, k_len) bool keep-mask if `mask` is a pure key-padding mask, else None.

    Accepts what models hand to attention: 2-d (B, k_len) 1/0 or bool masks, 4-d bool masks and
    4-d additive float masks (0 = attend, a very negative value = masked) shaped (B|1, 1, 1|q_len,
    >=k_len). A mask that differs between query rows (causal, sliding window) or carries other
    additive values (biases) is not a padding mask and gives None.
    """
    import torch

    if mask.dim() == 2:
        if tuple(mask.shape) != (batch, k_len) or mask.dtype.is_floating_point:
            return None
        return mask != 0
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] not in (1, q_len) or mask.shape[-1] < k_len:
        return None
    if mask.shape[0] not in (1, batch):
        return None
    mask = mask[..., :k_len]
    if mask.dtype == torch.bool:
        keep = mask
    elif mask.dtype.is_floating_point:
        keep = mask == 0
        # Masked entries must be effectively -inf (finfo.min or -inf), anything else is a bias.
        if not bool((keep | (mask <= torch.finfo(mask.dtype).min / 2)).all()):
            return None
    else:
        return None
    if keep.shape[2] > 1 and not bool((keep == keep[:, :, :1, :]).all()):
        return None
    return keep[:, 0, 0, :].expand(batch, k_len)


def _dense_keep_mask(kpm, causal: bool, batch: int, q_len: int, k_len: int, device):
    """(B, 1, q_len, k_len) bool mask from a padding mask and bottom-right causal masking."""
    import torch

    keep = torch.ones(batch, 1, q_len, k_len, dtype=torch.bool, device=device)
    if causal:
        i = torch.arange(q_len, device=device)[:, None]
        j = torch.arange(k_len, device=device)[None, :]
        keep = keep & (j <= i + (k_len - q_len))
    if kpm is not None:
        keep = keep & kpm.bool()[:, None, None, :]
    return keep


def _plain_mask_kind(mask_function):
    """"causal" or "bidirectional" if the transformers mask function is exactly that pattern
    (possibly combined with a packed-sequence mask that shows no packing), else None."""
    try:
        from transformers import masking_utils as mu
    except ImportError:
        return None
    if mask_function is mu.causal_mask_function:
        return "causal"
    bidirectional = getattr(mu, "bidirectional_mask_function", None)
    if bidirectional is not None and mask_function is bidirectional:
        return "bidirectional"
    # and_masks(causal, packed_sequence_mask_function(ids)): transformers adds this whenever
    # position_ids are given without a cache or mask (training); it is plain causal when every row
    # holds a single sequence.
    try:
        if mask_function.__qualname__ != "and_masks.<locals>.and_mask":
            return None
        (parts,) = [c.cell_contents for c in mask_function.__closure__]
        kinds = set()
        for part in parts:
            if part.__qualname__.startswith("packed_sequence_mask_function."):
                (ids,) = [c.cell_contents for c in part.__closure__]
                if not bool((ids == ids[:, :1]).all()):
                    return None
            else:
                kinds.add(_plain_mask_kind(part))
        return kinds.pop() if len(kinds) == 1 and None not in kinds else None
    except Exception:
        return None


def lean_mask(*args, **kwargs):
    """The "lean" entry of transformers' AttentionMaskInterface.

    Returns None (no padding) or the (B, k_len) bool padding mask when the pattern is plain
    causal or bidirectional and the queries are the last q_len positions of the keys (the kernel
    aligns causal masks bottom-right). Otherwise the full 4-d sdpa mask, which the attention
    function then hands to the sdpa path.
    """
    from transformers import masking_utils as mu

    def as_sdpa():
        return mu.sdpa_mask(*args, **kwargs)

    from lean.compat import mask_query_span

    if args:
        return as_sdpa()
    span = mask_query_span(kwargs)
    try:
        kv_length = int(kwargs["kv_length"])
    except (KeyError, TypeError):
        return as_sdpa()
    kind = _plain_mask_kind(kwargs.get("mask_function", mu.causal_mask_function))
    attention_mask = kwargs.get("attention_mask")
    if span is None or kind is None or int(kwargs.get("kv_offset", 0) or 0) != 0:
        return as_sdpa()
    if attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.shape[-1] != kv_length):
        return as_sdpa()
    if kind == "causal":
        q_len, first = span
        # Bottom-right alignment holds when the queries are positions kv_length - q_len ...
        # kv_length - 1 (a DynamicCache); a static cache padded past the last token breaks it.
        if q_len == 0 or first != kv_length - q_len:
            return as_sdpa()
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask.bool()


# ---------------------------------------------------------------------------------------------
# The attention-interface function (Llama, Qwen2, GPT-2, ... and BERT in transformers 5)


def _model_eager_function(module):
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)


def _fallback(module, query, key, value, attention_mask, kpm, causal, dropout, scaling, compact, **kwargs):
    """The model's own path: eager where attention weights or head_mask are asked for, else sdpa.
    `compact` says the mask came from lean_mask (None or 2-d) and must be expanded first."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, _, q_len, _ = query.shape
    k_len = key.shape[2]
    eager = _model_eager_function(module)
    wants_eager = kwargs.get("output_attentions") or kwargs.get("head_mask") is not None
    if compact:
        if attention_mask is not None and kpm is None:
            raise RuntimeError(f"lean attention got a 2-d mask of shape {tuple(attention_mask.shape)}, "
                               f"expected (batch, k_len) = ({b}, {k_len})")
        if (wants_eager and eager is not None) or kpm is not None or (causal and q_len not in (1, k_len)):
            keep = _dense_keep_mask(kpm, causal, b, q_len, k_len, query.device)
            if wants_eager and eager is not None:
                # eager adds the mask to the scores
                attention_mask = torch.zeros(keep.shape, dtype=query.dtype, device=query.device)
                attention_mask.masked_fill_(~keep, torch.finfo(query.dtype).min)
            else:
                attention_mask = keep
            kwargs["is_causal"] = False
        else:
            attention_mask = None
            kwargs["is_causal"] = causal and q_len > 1
    if wants_eager and eager is not None:
        kwargs.pop("is_causal", None)
        return eager(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def lean_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers attention function: query (B, Hq, Sq, D), key/value (B, Hkv, Sk, D); returns
    ((B, Sq, Hq, D), None) like the sdpa function it stands in for."""
    flash_attention, unsupported_reason = _flash()
    b, _, q_len, _ = query.shape
    k_len = key.shape[2]
    is_causal_arg = kwargs.get("is_causal")
    cross = bool(getattr(module, "is_cross_attention", False))

    compact = attention_mask is None or attention_mask.dim() == 2
    kpm = None
    if attention_mask is None:
        causal = bool(is_causal_arg if is_causal_arg is not None else getattr(module, "is_causal", False))
        causal = causal and not cross
    elif attention_mask.dim() == 2:
        # From lean_mask: causality is the module's (GPT-2 passes is_causal=False whenever a
        # mask exists, because its sdpa mask carries the causal part).
        causal = bool(getattr(module, "is_causal", False)) and not cross
        kpm = key_padding_from_mask(attention_mask, b, q_len, k_len)
    else:
        # A full 4-d mask says everything; the kernel can take it only if it is pure padding.
        causal = False
        kpm = key_padding_from_mask(attention_mask, b, q_len, k_len)

    reason = None
    if kwargs.get("output_attentions"):
        reason = "output_attentions=True needs the attention weights"
    elif kwargs.get("head_mask") is not None:
        reason = "head_mask is not supported"
    elif dropout and module.training:
        reason = "attention dropout in training"
    elif kwargs.get("sliding_window") or getattr(module, "sliding_window", None):
        reason = "sliding-window attention"
    elif kwargs.get("softcap") or kwargs.get("s_aux") is not None:
        reason = "logit softcapping / attention sinks"
    elif attention_mask is not None and kpm is None:
        reason = "the attention mask is not causal + key padding (sliding, packed or custom mask)"
    elif not (query.dtype == key.dtype == value.dtype):
        reason = f"mixed dtypes {query.dtype}/{key.dtype}/{value.dtype}"
    else:
        reason = unsupported_reason(query)
    if reason is not None:
        _log_fallback(reason)
        return _fallback(module, query, key, value, attention_mask, kpm, causal, dropout, scaling, compact,
                         **kwargs)

    out = flash_attention(query, key, value, causal=causal, key_padding_mask=kpm, sm_scale=scaling)
    return out.transpose(1, 2), None  # (B, Sq, Hq, D)


def register() -> None:
    """Add "lean" to transformers' attention and attention-mask interfaces (idempotent)."""
    try:
        from transformers import AttentionInterface
    except ImportError:  # older layouts
        from transformers.modeling_utils import AttentionInterface
    AttentionInterface.register(ATTENTION_NAME, lean_attention_forward)
    try:
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:
        AttentionMaskInterface = None
    if AttentionMaskInterface is not None:
        AttentionMaskInterface.register(ATTENTION_NAME, lean_mask)


# ---------------------------------------------------------------------------------------------
# Module swap for BERT-family models that do not use the attention interface


def _bind(original_forward, module, args, kwargs):
    try:
        bound = inspect.signature(original_forward).bind(module, *args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return bound.arguments


def _bert_fast_path(module, hidden_states, attention_mask, **extra):
    """BertSelfAttention and its copies: returns (context (B, S, H*D), None) or a fallback reason."""
    _, unsupported_reason = _flash()
    if extra.get("encoder_hidden_states") is not None:
        return "cross-attention"
    if extra.get("past_key_values") is not None or extra.get("past_key_value") is not None:
        return "a key/value cache"
    if getattr(module, "is_decoder", False):
        return "decoder (causal) BERT layers"
    if getattr(module, "position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type={module.position_embedding_type}"
    if extra.get("output_attentions"):
        return "output_attentions=True needs the attention weights"
    if extra.get("head_mask") is not None:
        return "head_mask is not supported"
    p = getattr(module, "dropout_prob", None)
    if p is None:
        p = getattr(getattr(module, "dropout", None), "p", 0.0)
    if module.training and p > 0:
        return "attention dropout in training"
    b, s, _ = hidden_states.shape
    kpm = None
    if attention_mask is not None:
        kpm = key_padding_from_mask(attention_mask, b, s, s)
        if kpm is None:
            return "the attention mask is not a key padding mask"
    h, d = module.num_attention_heads, module.attention_head_size
    q = module.query(hidden_states).view(b, s, h, d).transpose(1, 2)  # (B, H, S, D)
    reason = unsupported_reason(q)
    if reason is not None:
        return reason
    k = module.key(hidden_states).view(b, s, h, d).transpose(1, 2)
    v = module.value(hidden_states).view(b, s, h, d).transpose(1, 2)
    flash_attention, _ = _flash()
    out = flash_attention(q, k, v, key_padding_mask=kpm)  # (B, H, S, D)
    return out.transpose(1, 2).reshape(b, s, h * d), None


def _distilbert_fast_path(module, query, key, value, mask, head_mask=None, output_attentions=False, **extra):
    """DistilBERT's MultiHeadSelfAttention: returns (out_lin(context),) or a fallback reason."""
    _, unsupported_reason = _flash()
    if output_attentions:
        return "output_attentions=True needs the attention weights"
    if head_mask is not None:
        return "head_mask is not supported"
    if module.training and module.dropout.p > 0:
        return "attention dropout in training"
    b, q_len, _ = query.shape
    k_len = key.shape[1]
    kpm = None
    if mask is not None:
        kpm = key_padding_from_mask(mask, b, q_len, k_len)
        if kpm is None:
            return "the attention mask is not a key padding mask"
    h = module.n_heads
    d = module.dim // h
    q = module.q_lin(query).view(b, q_len, h, d).transpose(1, 2)  # (B, H, Sq, D)
    reason = unsupported_reason(q)
    if reason is not None:
        return reason
    k = module.k_lin(key).view(b, k_len, h, d).transpose(1, 2)
    v = module.v_lin(value).view(b, k_len, h, d).transpose(1, 2)
    flash_attention, _ = _flash()
    out = flash_attention(q, k, v, key_padding_mask=kpm).transpose(1, 2).reshape(b, q_len, h * d)
    return (module.out_lin(out),)


def _is_bert_self_attention(module) -> bool:
    return all(hasattr(module, a) for a in ("query", "key", "value", "num_attention_heads", "attention_head_size"))


def _is_distilbert_attention(module) -> bool:
    return all(hasattr(module, a) for a in ("q_lin", "k_lin", "v_lin", "out_lin", "n_heads", "dim"))


def _lean_class(cls, fast_path):
    """A subclass of `cls` whose forward tries the kernel and otherwise runs cls.forward unchanged."""
    if cls in _lean_classes:
        return _lean_classes[cls]
    original_forward = cls.forward

    def forward(self, *args, **kwargs):
        named = _bind(original_forward, self, args, kwargs)
        if named is None:
            result = "unrecognised forward arguments"
        else:
            named.pop("self", None)
            named.update(named.pop("kwargs", {}) or {})
            result = fast_path(self, **named)
        if isinstance(result, str):
            _log_fallback(result)
            return original_forward(self, *args, **kwargs)
        return result

    lean_cls = type(f"Lean{cls.__name__}", (cls,), {"forward": forward, "_lean_original_class": cls})
    _lean_classes[cls] = lean_cls
    return lean_cls


def uses_attention_interface(model) -> bool:
    """True when `model` picks its attention function from transformers' attention interface (Llama,
    GPT-2 and, from transformers 5, BERT, RoBERTa and DistilBERT), so "lean" can be set by name."""
    return bool(getattr(model, "_supports_attention_backend", False))


def use_lean_attention(model):
    """Run `model`'s attention through the lean kernel; returns the model (changed in place).

    Interface models get attn_implementation "lean"; BERT-family self-attention modules get a
    subclass that calls the kernel. Raises ValueError when the model has neither.
    """
    register()
    if uses_attention_interface(model):
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(ATTENTION_NAME)
        else:
            model.config._attn_implementation = ATTENTION_NAME
        logger.info("%s: attention implementation set to %r", type(model).__name__, ATTENTION_NAME)
        return model
    swapped = 0
    for module in model.modules():
        cls = type(module)
        if "_lean_original_class" in cls.__dict__:
            swapped += 1
            continue
        if _is_bert_self_attention(module):
            module.__class__ = _lean_class(cls, _bert_fast_path)
        elif _is_distilbert_attention(module):
            module.__class__ = _lean_class(cls, _distilbert_fast_path)
        else:
            continue
        swapped += 1
    if swapped == 0:
        raise ValueError(
            f"{type(model).__name__} neither uses transformers' attention interface nor has BERT/DistilBERT "
            "self-attention modules; lean attention cannot run it"
        )
    logger.info("%s: %d self-attention modules run through lean attention", type(model).__name__, swapped)
    return model

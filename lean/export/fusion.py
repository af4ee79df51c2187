"""What an optimization level did to the graph: node counts before and after, and the fused operators.

    summary = fusion_summary(Path("fp32/model.onnx"), Path("optimized/model.onnx"))
    summary["fused"]        # {"Attention": 6, "SkipLayerNormalization": 12, ...} in the optimized graph
    summary["nodes"]        # {"before": 529, "after": 50}
    summary["changed"]      # {"MatMul": [72, 18], "Softmax": [6, 0], ...}: op type -> [before, after]

Both exporters' optimized graphs are counted the same way, so the manifest says what each level fused
whichever exporter made the graph (docs/export.md lists what each level fuses).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

# onnxruntime's fused (contrib) operators a transformer optimization level can write
FUSED_OPS = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
             "LayerNormalization", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization",
             "BiasGelu", "FastGelu", "Gelu", "GemmFastGelu", "QuickGelu", "RotaryEmbedding",
             "GroupQueryAttention")
ATTENTION_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention")


def op_counts(file: Path) -> Counter:
    """How many nodes of each op type the graph's top level has (weights are not loaded)."""
    import onnx

    model = onnx.load(str(file), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)


def fusion_summary(before: Path, after: Path) -> dict[str, Any]:
    """Node counts of the graph before and after optimization, the fused operators after, what changed."""
    old, new = op_counts(before), op_counts(after)
    changed = {op: [old.get(op, 0), new.get(op, 0)] for op in sorted(set(old) | set(new))
               if old.get(op, 0) != new.get(op, 0)}
    fused = {op: new[op] for op in FUSED_OPS if new.get(op, 0) > old.get(op, 0)}
    return {"nodes": {"before": sum(old.values()), "after": sum(new.values())}, "fused": fused,
            "attention_fused": any(op in fused for op in ATTENTION_OPS), "changed": changed}


def attention_count(file: Path) -> int:
    """Fused attention nodes in a graph (Attention, MultiHeadAttention, GroupQueryAttention)."""
    counts = op_counts(file)
    return sum(counts.get(op, 0) for op in ATTENTION_OPS)

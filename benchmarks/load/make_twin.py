"""Build a structural twin of the default suite's `student-l3+onnx-int8` for load tests, in a minute.

    python benchmarks/load/make_twin.py /tmp/l3-int8

The student of `lean bench` is all-MiniLM-L6-v2 cut to 3 layers, distilled, then exported to ONNX
with int8-dynamic quantization at 128 tokens. Speed depends on that shape and precision, not on the
weights, so when the suite's cache does not hold the student yet, this twin (the base's first three
layers and an untrained 5-label head, exported the same way) serves the same graph shapes at the same
cost. Its predictions are meaningless; never quote its accuracy.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(out: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lean.export import ExportConfig, export
    from lean.models import builtin_model_path, write_manifest

    labels = ["business", "entertainment", "politics", "sport", "tech"]
    base = builtin_model_path("minilm-l6")
    source = out.with_name(out.name + "-source")
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), num_hidden_layers=3, id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)})
    model.save_pretrained(source, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(source)
    write_manifest(source, {"step": "load-test-twin", "max_length": 128,
                            "task": {"spec": "bbc-news", "name": "bbc-news", "kind": "classification",
                                     "split_seed": 42, "label_names": labels}})
    # the gates compare against an untrained head, so they are opened: only the graph matters here
    config = ExportConfig(quantize="int8-dynamic", max_eval_samples=16, min_agreement=0.0, max_metric_drop=100.0)
    print(export(str(source), config, str(out)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.splitlines()[2].strip())
    main(Path(sys.argv[1]))

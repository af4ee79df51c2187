"""ONNX fusions and int8 on a CPU: every export variant measured interleaved in one process.

    python benchmarks/onnx_fusion.py runs/teacher -o benchmarks/results/2026-12-07-cpu-onnx-fusion
    python benchmarks/onnx_fusion.py runs/teacher -o /tmp/x --exporter optimum --rounds 5 --no-static-variants

Builds with `lean export` (the torch exporter by default: the default install's path) fp32, O1, O2,
int8-dynamic, O2 + int8-dynamic and int8-static, and, for the static-vs-dynamic question, static int8
variants lean does not ship (QOperator format, per-tensor scales, MatMul only, percentile ranges)
quantized with onnxruntime from the same fp32 graph. Then, for each: the fused nodes of its graph,
accuracy on the task's full test split, and latency at batch 1 x 128 and 32 x 128 on real test texts
padded to 128 tokens. Every session is loaded at once and timed in rounds whose order rotates, so drift
on a shared machine falls on every variant alike; the figure is the median of per-round means.
Writes results.json and report.md (a table with ratios against fp32 and against int8-dynamic).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

LENGTH = 128
LEAN_VARIANTS = {  # name -> lean export options
    "fp32": {}, "O1": {"optimize": "O1"}, "O2": {"optimize": "O2"},
    "int8-dynamic": {"quantize": "int8-dynamic"}, "O2+int8-dynamic": {"optimize": "O2", "quantize": "int8-dynamic"},
    "int8-static": {"quantize": "int8-static"},
}
# name -> onnxruntime quantize_static options that differ from lean's int8-static (QDQ, per-channel, min-max,
# MatMul and Gather)
STATIC_VARIANTS = {
    "static-qoperator": {"quant_format": "QOperator"},
    "static-per-tensor": {"per_channel": False},
    "static-matmul-only": {"op_types_to_quantize": ["MatMul"]},
    "static-percentile": {"calibrate_method": "Percentile"},
}


def build_lean(source: str, exporter: str, out: Path, calibration: int) -> dict[str, Path]:
    from lean.export import ExportConfig, export

    built = {}
    for name, options in LEAN_VARIANTS.items():
        target = out / name
        if not (target / "lean.json").is_file():
            started = time.time()
            export(source, ExportConfig(exporter=exporter, max_eval_samples=64, latency_check=False,
                                        calibration_samples=calibration, min_agreement=0.0, max_metric_drop=100.0,
                                        **options), str(target), overwrite=target.exists())
            print(f"built {name} in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
        built[name] = target
    return built


def build_static(fp32_dir: Path, task, calibration: int, out: Path) -> dict[str, Path]:
    """Static int8 variants quantized with onnxruntime from lean's fp32 graph, in lean's directory layout."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from lean.export.ort_tools import has_vnni
    from lean.export.torch_exporter import STATIC_OPS, _Calibration
    from lean.runtime import load

    graph = onnx.load(str(fp32_dir / "model.onnx"))
    del graph.graph.value_info[:]  # as lean's quantizer does: the exporter's traced shapes clash with its own
    source = out / "static-source.onnx"
    onnx.save(graph, str(source))
    feed = load(fp32_dir).encode(task.train.texts[:calibration], max_length=LENGTH, pad_to=LENGTH)
    built = {}
    for name, changes in STATIC_VARIANTS.items():
        target = out / name
        if not (target / "model.onnx").is_file():
            shutil.copytree(fp32_dir, target, dirs_exist_ok=True)
            options = {"quant_format": "QDQ", "per_channel": True, "op_types_to_quantize": STATIC_OPS,
                       "calibrate_method": "MinMax", **changes}
            quantize_static(str(source), str(target / "model.onnx"), _Calibration(feed, str(source)),
                            quant_format=QuantFormat[options["quant_format"]],
                            op_types_to_quantize=options["op_types_to_quantize"], per_channel=options["per_channel"],
                            reduce_range=not has_vnni(), activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod[options["calibrate_method"]])
        built[name] = target
    return built


def accuracy(path: Path, task) -> float:
    from lean.runtime import load

    model = load(path, provider="CPUExecutionProvider")
    predicted = [p["label"] for p in model.predict(task.test.texts, batch_size=32, max_length=LENGTH)]
    truth = [task.label_names[y] for y in task.test.labels]
    return sum(p == t for p, t in zip(predicted, truth)) / len(truth)


def time_rounds(paths: dict[str, Path], feeds: dict[str, dict], rounds: int, threads: int,
                calls: dict[str, int]) -> dict[str, dict[str, list[float]]]:
    """ms per call of every variant at every feed, one mean per round; the order rotates each round."""
    from lean.export.latency import session

    sessions = {name: session(path / "model.onnx", threads) for name, path in paths.items()}
    inputs = {name: {i.name for i in s.get_inputs()} for name, s in sessions.items()}
    times = {name: {cell: [] for cell in feeds} for name in sessions}
    names = list(sessions)
    for name in names:  # warm-up
        for feed in feeds.values():
            sessions[name].run(None, {k: v for k, v in feed.items() if k in inputs[name]})
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for cell, feed in feeds.items():
            for name in order:
                fed = {k: v for k, v in feed.items() if k in inputs[name]}
                start = time.perf_counter()
                for _ in range(calls[cell]):
                    sessions[name].run(None, fed)
                times[name][cell].append((time.perf_counter() - start) * 1000 / calls[cell])
        print(f"round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    return times


def node_summary(path: Path) -> dict[str, int]:
    from lean.export.fusion import FUSED_OPS, op_counts

    counts = op_counts(path / "model.onnx")
    keep = (*FUSED_OPS, "QAttention", "MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "QuantizeLinear",
            "DequantizeLinear", "Softmax", "MatMul")
    return {"nodes": sum(counts.values()), **{op: counts[op] for op in keep if counts.get(op)}}


def report(results: dict, out: Path) -> None:
    rows = results["variants"]
    lines = [f"# ONNX export variants, {results['model']} ({results['exporter']} exporter)", "",
             f"{results['conditions']}", "",
             "| variant | attention nodes | nodes | accuracy | b1x128 ms | x fp32 | x int8-dyn | b32x128 ms | x fp32 | x int8-dyn |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, row in rows.items():
        cells = []
        for cell in ("b1", "b32"):
            ms = row["ms"][cell]
            cells += [f"{ms:.2f}", f"{rows['fp32']['ms'][cell] / ms:.2f}x", f"{rows['int8-dynamic']['ms'][cell] / ms:.2f}x"]
        attention = row["graph"].get("Attention", 0) + row["graph"].get("QAttention", 0)
        lines.append(f"| {name} | {attention} | {row['graph']['nodes']} | {row['accuracy']:.4f} | " + " | ".join(cells) + " |")
    lines += ["", "x fp32 / x int8-dyn: ratio of the medians (above 1: faster than that variant).",
              "Graph node counts are of model.onnx as written; onnxruntime fuses further when it loads a session.",
              "", "Paired within each round (the plainer variant's time over this one's, round by round: the drift of a "
              "shared machine cancels), median [lowest, highest] of the rounds:", "",
              "| variant | plainer | b1x128 | b32x128 |", "| --- | --- | --- | --- |"]
    for name, base in PAIRS:
        if name in rows and base in rows:
            lines.append(f"| {name} | {base} | " + " | ".join(paired(rows[name], rows[base], cell) for cell in ("b1", "b32")) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")


PAIRS = [("O1", "fp32"), ("O2", "fp32"), ("int8-dynamic", "fp32"), ("O2+int8-dynamic", "int8-dynamic"),
         *((name, "int8-dynamic") for name in ("int8-static", *STATIC_VARIANTS))]


def paired(row: dict, base: dict, cell: str) -> str:
    ratios = [b / a for a, b in zip(row["ms_per_round"][cell], base["ms_per_round"][cell])]
    return f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}, {max(ratios):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a fine-tuned classifier directory with a task in its lean.json")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--exporter", default="torch", choices=["torch", "optimum"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--no-static-variants", action="store_true", help="only the variants lean export makes")
    parser.add_argument("--work", default=None, help="where the exported variants go (default: OUTPUT/../_work-NAME)")
    args = parser.parse_args()

    from lean.lineage import inherit
    from lean.runtime import load, physical_cores

    out = Path(args.output)
    work = Path(args.work or out.parent / f"_work-{out.name}") / args.exporter
    work.mkdir(parents=True, exist_ok=True)
    task = inherit(args.model, {}).load_task()
    paths = build_lean(args.model, args.exporter, work, args.calibration_samples)
    if not args.no_static_variants:
        paths.update(build_static(paths["fp32"], task, args.calibration_samples, work))
    threads = args.threads or physical_cores()
    encoder = load(paths["fp32"])
    feeds = {"b1": encoder.encode(task.test.texts[:1], max_length=LENGTH, pad_to=LENGTH),
             "b32": encoder.encode(task.test.texts[:32], max_length=LENGTH, pad_to=LENGTH)}
    times = time_rounds(paths, feeds, args.rounds, threads, {"b1": 10, "b32": 1})
    variants = {name: {"graph": node_summary(path), "accuracy": round(accuracy(path, task), 4),
                       "ms": {cell: round(statistics.median(v), 3) for cell, v in times[name].items()},
                       "ms_per_round": {cell: [round(x, 3) for x in v] for cell, v in times[name].items()},
                       "options": LEAN_VARIANTS.get(name) or STATIC_VARIANTS.get(name)}
                for name, path in paths.items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    conditions = (f"{platform.processor() or platform.machine()}, {threads} intra-op threads, {args.rounds} rounds "
                  f"rotating the order (b1: 10 calls per round, b32: 1), median of per-round means; accuracy on the "
                  f"{len(task.test)} test texts; {args.calibration_samples} calibration texts; commit {commit}")
    results = {"model": str(args.model), "exporter": args.exporter, "conditions": conditions, "threads": threads,
               "rounds": args.rounds, "variants": variants}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report(results, out)
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()

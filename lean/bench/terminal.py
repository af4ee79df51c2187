"""The terminal's view of a bench run: a line as each variant finishes, the table at the end.

A reader of runs: imports the bottom of lean.bench and the other readers only; rich inside.
"""

from __future__ import annotations

from typing import Any

from lean.bench.figures import cell_at, distrusted_cells, fmt, grid, latency_text, mb, peak_memory_mb


def results_table(results: dict[str, Any]):
    """A rich Table of the run (the same columns as report.md, errors shortened)."""
    from rich.table import Table

    lm = (results.get("task") or {}).get("kind") == "lm"
    cells = grid(results)
    batches = sorted({c["batch_size"] for r in results["variants"]
                      for c in (r.get("generation") or {}).get("cells", [])})
    table = Table(title=f"lean bench {results['suite']['name']} ({results['run']['device']}, "
                        f"{results['run']['threads']} threads; speedup over {results['baseline']})")
    quality_columns = ["perplexity (×)"] + [f"b{b} decode tok/s (×)" for b in batches] if lm else ["accuracy", "F1"]
    cell_columns = [f"b{batch}×{length} ms" for batch, length in cells]
    for column in ["variant", "status", *quality_columns, *cell_columns, "peak MB", "weights MB"]:
        table.add_column(column, justify="left" if column in ("variant", "status") else "right")
    for row in results["variants"]:
        quality, size, ratios = row.get("quality") or {}, row.get("size") or {}, row.get("vs_baseline") or {}
        status = row["status"] if row["status"] == "ok" else f"{row['status']}: {(row.get('error') or '')[:60]}"
        peak = peak_memory_mb(row)
        if lm:
            gen = {c["batch_size"]: c for c in (row.get("generation") or {}).get("cells", [])}
            values = [_with_ratio(quality.get("perplexity"), ratios.get("perplexity_ratio"), 2)]
            values += [_with_ratio((gen.get(b) or {}).get("decode_tokens_per_s"), ratios.get(f"decode_speedup_b{b}"), 1)
                       for b in batches]
        else:
            values = [fmt(quality.get("accuracy")), fmt(quality.get("macro_f1"))]
        table.add_row(row["name"], status, *values, *[latency_text(cell_at(row, key)) for key in cells],
                      f"{peak:.0f}" if peak else "",
                      f"{mb(size['weights_bytes']):.1f}" if size.get("weights_bytes") else "")
    distrusted = [line.replace("`", "") for line in distrusted_cells(results)]
    if distrusted:  # said beside the table, so no figure in it reads as clean (the CLI prints busy_line below)
        table.caption = "\n".join(["cells whose rounds do not support their figures:"] + distrusted[:12]
                                   + ([f"... {len(distrusted) - 12} more in report.md"] if len(distrusted) > 12 else []))
        table.caption_justify = "left"
    return table


def _with_ratio(value: float | None, ratio: float | None, digits: int) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}" + (f" ({ratio:.2f}×)" if ratio else "")


def print_row(console, row: dict[str, Any], results: dict[str, Any]) -> None:
    """One line as each variant finishes."""
    if row["status"] != "ok":
        console.print(f"  {row['name']}: {row['status']} ({row.get('phase')}): {row.get('error')}", highlight=False)
        return
    quality = row.get("quality") or {}
    cells = [c for c in row.get("latency", []) if "median_ms" in c]
    first = f", b{cells[0]['batch_size']}×{cells[0]['seq_length']} {latency_text(cells[0])} ms" if cells else ""
    if row.get("pending"):
        first = ", latency timed once every variant is loaded"
    cached = sum(1 for c in row.get("chain", []) if c["cached"])
    built = len(row.get("chain", [])) - cached
    if quality.get("perplexity") is not None:  # an LM: perplexity and decode speed at the first batch size
        gen = ((row.get("generation") or {}).get("cells") or [{}])[0]
        first += (f", b{gen['batch_size']} decode {gen['decode_tokens_per_s']} tok/s, TTFT {gen['ttft_ms']:.1f} ms"
                  if gen.get("decode_tokens_per_s") else "")
    what = f"perplexity {quality['perplexity']:.3f}" if quality.get("perplexity") is not None else \
        f"accuracy {fmt(quality.get('accuracy'))}"
    peak = peak_memory_mb(row)
    console.print(f"  {row['name']}: {what}{first}" + (f", peak {peak:.0f} MB" if peak else "")
                  + f" ({built} step(s) built, {cached} reused, {row['timing'].get('wall_s', 0):.0f} s)",
                  highlight=False)

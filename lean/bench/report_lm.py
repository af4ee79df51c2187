"""Reading a language-model run: ratios against the baseline, report.md's LM table, the plot's points.

    lm_ratios(row, base)      # perplexity ratio, decode speedup and TTFT ratio per batch, greedy agreement

A reader of runs: imports nothing else of lean.bench. The figures come from lean.bench.lm (the
scenario, in the measuring subprocess).
"""

from __future__ import annotations

from typing import Any


def _cells(row: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {c["batch_size"]: c for c in (row.get("generation") or {}).get("cells", [])}


def greedy_match(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Prompts whose greedy new ids are identical in two cells (prompts both used)."""
    a, b = dict((i, r) for i, r in mine.get("outputs", [])), dict((i, r) for i, r in theirs.get("outputs", []))
    common = sorted(set(a) & set(b))
    same = sum(1 for i in common if a[i] == b[i])
    return {"identical": same, "prompts": len(common)}


def lm_ratios(row: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Against the baseline: perplexity ratio, decode speedup and TTFT ratio per batch, greedy agreement."""
    out: dict[str, Any] = {}
    p, bp = (row.get("quality") or {}).get("perplexity"), (base.get("quality") or {}).get("perplexity")
    out["perplexity_ratio"] = round(p / bp, 4) if p and bp else None
    mine, theirs = _cells(row), _cells(base)
    for batch, cell in mine.items():
        ref = theirs.get(batch)
        if not ref:
            continue
        if cell.get("decode_tokens_per_s") and ref.get("decode_tokens_per_s"):
            out[f"decode_speedup_b{batch}"] = round(cell["decode_tokens_per_s"] / ref["decode_tokens_per_s"], 4)
        if cell.get("ttft_ms") and ref.get("ttft_ms"):
            out[f"ttft_ratio_b{batch}"] = round(cell["ttft_ms"] / ref["ttft_ms"], 4)
        out[f"greedy_match_b{batch}"] = greedy_match(cell, ref)
    return out


def lm_markdown(results: dict[str, Any]) -> list[str]:
    """The language-model table of report.md: perplexity, generation per batch size, agreement."""
    batches: list[int] = []
    for row in results["variants"]:
        for b in _cells(row):
            if b not in batches:
                batches.append(b)
    header = ["variant", "perplexity (×)"] + [f"b{b} TTFT ms" for b in batches] + \
             [f"b{b} decode tok/s (×)" for b in batches] + [f"b{b} greedy = baseline" for b in batches]
    lines = ["", "## Language model", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["variants"]:
        quality, ratios, cells = row.get("quality") or {}, row.get("vs_baseline") or {}, _cells(row)
        ppl = quality.get("perplexity")
        values = [f"`{row['name']}`", "" if ppl is None else f"{ppl:.3f}" + (
            f" ({ratios['perplexity_ratio']:.3f}×)" if ratios.get("perplexity_ratio") else "")]
        values += [f"{cells[b]['ttft_ms']:.1f}" if b in cells else "" for b in batches]
        for b in batches:
            rate, speed = (cells.get(b) or {}).get("decode_tokens_per_s"), ratios.get(f"decode_speedup_b{b}")
            values.append("" if rate is None else f"{rate:.1f}" + (f" ({speed:.2f}×)" if speed else ""))
        for b in batches:
            match = ratios.get(f"greedy_match_b{b}")
            values.append(f"{match['identical']}/{match['prompts']}" if match else "")
        lines.append("| " + " | ".join(values) + " |")
    q = next((r.get("quality") for r in results["variants"] if r.get("quality")), None) or {}
    gen = next((r.get("generation") for r in results["variants"] if r.get("generation")), None) or {}
    lines += ["", f"- **perplexity**: sliding window {q.get('window')} tokens, stride {q.get('stride')}, over "
              f"{q.get('tokens')} scored tokens of the joined test split; (×) is the ratio to the baseline "
              "(lower is better).",
              f"- **generation**: greedy, {gen.get('new_tokens')} new tokens after prompts of "
              f"{gen.get('prompt_tokens')} "
              "tokens cut from real test texts; TTFT is the median time to the first new token (prompt prefill "
              "included); decode tok/s counts the tokens after the first over the time after the first, summed over "
              "the timed rounds; (×) is the speedup over the baseline. *greedy = baseline* counts the prompts whose "
              "new tokens are identical to the baseline's."]
    return lines


def pareto_points(results: dict[str, Any]) -> tuple[list[tuple[str, float, float]], int | None]:
    """(name, decode tokens/s, perplexity) per measured variant at the smallest generation batch."""
    batches = sorted({b for row in results["variants"] for b in _cells(row)})
    batch = batches[0] if batches else None
    points = []
    for row in results["variants"]:
        cell = _cells(row).get(batch)
        ppl = (row.get("quality") or {}).get("perplexity")
        if row.get("status") == "ok" and cell and cell.get("decode_tokens_per_s") and ppl is not None:
            points.append((row["name"], cell["decode_tokens_per_s"], ppl))
    return points, batch

"""A finished run's figures as the readers show them: rows, latency cells, numbers as text.

A reader of runs (with report, markdown, plot, terminal): imports nothing else of lean.bench.
"""

from __future__ import annotations

from typing import Any

from lean.bench.stats import interval_spread


def row_named(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in results["variants"] if r["name"] == name), None)


def peak_memory_mb(row: dict[str, Any]) -> float | None:
    """The memory figure ratios use: CUDA peak allocated on a GPU, else the subprocess's peak RSS."""
    memory = row.get("memory") or {}
    return memory.get("cuda_peak_mb") if memory.get("cuda_peak_mb") is not None else memory.get("peak_rss_mb")


def mb(n: int | None) -> float | None:
    return round(n / 2**20, 3) if n is not None else None


def grid(results: dict[str, Any]) -> list[tuple[int, int]]:
    """The (batch, length) cells of the run, in the order they were measured."""
    cells: list[tuple[int, int]] = []
    for row in results["variants"]:
        for cell in row.get("latency", []):
            key = (cell["batch_size"], cell["seq_length"])
            if key not in cells:
                cells.append(key)
    return cells


def primary_cell(results: dict[str, Any]) -> tuple[int, int] | None:
    """The cell the Pareto plot uses: the suite's first batch size at its first length."""
    measure = results.get("suite", {}).get("measure") or {}
    if measure.get("batch_sizes") and measure.get("seq_lengths"):
        return measure["batch_sizes"][0], measure["seq_lengths"][0]
    cells = grid(results)
    return cells[0] if cells else None


def cell_at(row: dict[str, Any], key: tuple[int, int]) -> dict[str, Any] | None:
    return next((c for c in row.get("latency", [])
                 if (c["batch_size"], c["seq_length"]) == key and "median_ms" in c), None)


def fmt(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def latency_text(cell: dict[str, Any] | None) -> str:
    """'5.00 (2.00× ±8%)'; an unreliable speedup as '5.00 (2.00×, unreliable)', one too few rounds had an
    interval for as '±?', and a cell out of order with another of its variant marked '†'."""
    if cell is None:
        return "–"
    speed = ""
    if cell.get("speedup"):
        speed = f" ({cell['speedup']:.2f}×, unreliable)" if cell.get("unreliable") else \
            f" ({cell['speedup']:.2f}×{spread_text(cell)})"
    elif cell.get("unreliable"):
        speed = " (unreliable)"
    return f"{cell['median_ms']:.2f}{speed}" + (" †" if cell.get("order") else "")


def spread_text(cell: dict[str, Any]) -> str:
    spread = interval_spread(cell)
    if spread is None:
        return " ±?" if cell.get("interval_note") else ""
    return f" ±{spread:.0%}"


def distrusted_cells(results: dict[str, Any]) -> list[str]:
    """'`variant` b1×128: why' for every cell marked unreliable or out of order, in table order."""
    lines = []
    for row in results["variants"]:
        for cell in row.get("latency") or []:
            where = f"`{row['name']}` b{cell['batch_size']}×{cell['seq_length']}"
            if cell.get("unreliable"):
                lines.append(f"{where}: unreliable, {cell['unreliable']}")
            if cell.get("order"):
                lines.append(f"{where} †: {cell['order']}")
    return lines

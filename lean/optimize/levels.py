"""Which export of a chain is plainer: the rule that keeps `lean optimize` off a slower optimization level.

An ONNX optimization level (O1..O3) or int8-static is not faster than its plainer form (the unfused
graph; int8-dynamic) on every CPU (docs/export.md), and two measurements on a shared machine differ
by a few percent. So the search keeps a more optimized export only when it beats its plainer form,
also within the budget, by more than PLAINER_MARGIN on the objective (lean.optimize.strategy.Search.best).
"""

from __future__ import annotations

from typing import Any

PLAINER_MARGIN = 0.05  # larger than the spread of two medians of one model on a shared 2-core machine
OPTIMIZE_RANK = {None: 0, "O1": 1, "O2": 2, "O3": 3, "O4": 4}


def export_level(chain: list[dict[str, Any]]) -> tuple[tuple[int, int], list, dict] | None:
    """((optimize rank, 1 for int8-static), the steps before the export, the export's other options) for a
    chain that ends in an export step; None for any other chain."""
    if not chain or "export" not in chain[-1]:
        return None
    options = dict(chain[-1]["export"] or {})
    optimize = options.pop("optimize", None)
    level = OPTIMIZE_RANK.get(str(optimize).upper() if optimize else None, 0)
    static = options.get("quantize") == "int8-static"
    if static:
        options["quantize"] = "int8-dynamic"
        options.pop("calibration_samples", None)
    return (level, int(static)), chain[:-1], options


def plainer_export(chain: list[dict[str, Any]], other: list[dict[str, Any]]) -> bool:
    """Whether `other` is `chain` with a plainer export: the same steps and export options, but a lower
    --optimize level and/or int8-dynamic where `chain` has int8-static."""
    mine, theirs = export_level(chain), export_level(other)
    if mine is None or theirs is None or mine[1:] != theirs[1:]:
        return False
    return theirs[0] != mine[0] and all(t <= m for t, m in zip(theirs[0], mine[0]))

"""The layering CI enforces with import-linter (.importlinter, run by .ci/run as `lint-imports`) stays complete:
a new top-level module of lean is forbidden to lean.runtime too, every module a contract names exists, and the
Triton kernels (installed as lean.kernels from kernels/, outside the tree import-linter reads) import nothing of lean.
"""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def contracts() -> dict[str, dict[str, list[str]]]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / ".importlinter")
    found = {}
    for section in parser.sections():
        if section.startswith("importlinter:contract:"):
            found[section.split(":")[-1]] = {key: [v.strip() for v in value.split("\n") if v.strip()]
                                             for key, value in parser[section].items()}
    return found


def lean_modules() -> set[str]:
    """Every module and package of lean, by dotted name."""
    names = set()
    for path in (ROOT / "lean").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_runtime_may_import_no_other_part_of_lean():
    top_level = {name for name in lean_modules() if name.count(".") == 1}
    forbidden = set(contracts()["runtime-alone"]["forbidden_modules"])
    assert top_level - forbidden == {"lean.runtime", "lean.__main__"}, "add the new module to .importlinter"


def test_every_module_a_contract_names_exists():
    known = lean_modules()
    for name, contract in contracts().items():
        for key in ("source_modules", "forbidden_modules", "layers"):
            for entry in contract.get(key, []):
                for module in entry.split("|"):
                    assert module.strip() in known, f"contract {name} names {module.strip()}, which is gone"


def test_kernels_import_nothing_of_lean():
    for path in (ROOT / "kernels").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(alias.name.split(".")[0] == "lean" for alias in node.names), path.name
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert (node.module or "").split(".")[0] != "lean", path.name

"""Python started in the clone's root, where the README leaves a user: the top-level kernels/ folder (installed
as lean.kernels) must not shadow the Hub's `kernels` package that transformers 5 requires and imports.

The rest of the suite runs subprocesses with PYTHONSAFEPATH (conftest.py); these run without it, as a user's
`python` does, so the working directory is first on sys.path.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_in_root(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def readme_python_imports() -> str:
    """The import lines of the README's Python quick start, as written."""
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    lines = [line for line in block.splitlines() if line.startswith(("from ", "import "))]
    assert len(lines) >= 3, "the README's Python block lost its imports"
    return "\n".join(lines)


def test_transformers_models_import_from_the_repo_root():
    assert (ROOT / "kernels" / "__init__.py").is_file()
    done = run_in_root("-c", "from transformers import BertForSequenceClassification, LlamaForCausalLM; print('ok')")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_readme_quick_start_imports_from_the_repo_root():
    code = readme_python_imports() + "\nfrom lean.kernels import attention_reference, flash_attention\nprint('ok')"
    done = run_in_root("-c", code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_python_dash_m_lean_runs_the_cli_from_the_repo_root():
    done = run_in_root("-m", "lean", "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finetune" in done.stdout and "bench" in done.stdout


def test_a_bare_kernels_import_is_the_installed_package_or_none():
    # the folder is still found by name (that is what PYTHONSAFEPATH prevents for lean's own subprocesses) ...
    probe = ("import importlib.util, sys\n"
             "try:\n    import kernels\nexcept ModuleNotFoundError as e:\n    print('missing', e.name); sys.exit()\n"
             "print('found', kernels.__file__)")
    done = run_in_root("-c", probe)
    assert done.returncode == 0, done.stderr[-2000:]
    kind, where = done.stdout.split()
    # ... but importing it gives the Hub's package where one is installed, and "no module" where none is
    installed = importlib.util.find_spec("kernels")  # this process runs with PYTHONSAFEPATH: no checkout on the path
    if installed is None:
        assert (kind, where) == ("missing", "kernels")
    else:
        assert kind == "found" and Path(where) == Path(installed.origin)
        assert ROOT / "kernels" not in Path(where).parents

"""Shared pieces of the lean bench tests: fake steps, the tiny suite and its one run per session.

    from bench_support import fake_steps, row_named, run_cli, tiny_run, tiny_suite
    FIXTURES = (fake_steps, tiny_run)  # pytest finds fixtures by their name in the test module

One tiny suite (a 4-layer 32-wide random BERT, 100 BBC articles, one batch size x one length,
two repeats, one thread) runs once per session; the tests that read it share its results. Fake steps
(a `copy` step that counts its builds, a `boom` step that raises) are registered from a module
written to a temp dir, so the build subprocesses can import them too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lean.bench.suite import parse_suite

FAKE_STEPS = '''
"""Fake steps for tests/test_bench.py."""
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CopyConfig:
    counter: str = ""
    tag: str = "a"


def copy_run(source, config, out):
    for f in Path(source).iterdir():
        if f.is_file() and f.name != "lean.json":
            shutil.copy(f, Path(out) / f.name)
    with open(config.counter, "a") as fh:
        fh.write(config.tag + "\\n")
    return {}


@dataclass
class BoomConfig:
    message: str = "the boom step always raises"


def boom_run(source, config, out):
    raise RuntimeError(config.message)
'''


def tiny_suite(base: Path, task: Path, counter: Path, **extra_variants) -> dict:
    variants = {
        "fp32": {"load": {"attention": "eager"}},
        "copied": {"steps": [{"copy": {"counter": str(counter)}}]},
        "boom": {"steps": [{"boom": {}}]},
        "slow": {"measure": {"timeout_s": 0.5}},
        "needs-gpu": {"load": {"dtype": "float16"}, "requires": ["cuda", "no_such_package_xyz"]},
        "tfidf-logreg": {"kind": "tfidf-logreg"},
    }
    variants.update(extra_variants)
    return {"name": "tiny", "task": str(task), "base": str(base), "teacher": [], "baseline": "fp32",
            "measure": {"batch_sizes": [2], "seq_lengths": [64], "warmup": 1, "repeats": 2, "threads": 1,
                        "timeout_s": 300},
            "variants": variants}


@pytest.fixture(scope="session")
def fake_steps(tmp_path_factory):
    from lean.steps import STEPS

    folder = tmp_path_factory.mktemp("fake_steps")
    (folder / "bench_fake_steps.py").write_text(FAKE_STEPS)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        import os

        # no empty entry: "" on PYTHONPATH would put every child's working directory on sys.path
        mp.setenv("PYTHONPATH", os.pathsep.join(p for p in [str(folder), os.environ.get("PYTHONPATH")] if p))
        mp.setitem(STEPS, "copy", ("bench_fake_steps:copy_run", "bench_fake_steps:CopyConfig"))
        mp.setitem(STEPS, "boom", ("bench_fake_steps:boom_run", "bench_fake_steps:BoomConfig"))
        yield folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_bert_dir, bbc_csv, fake_steps):
    """One run of the tiny suite: (results, output dir, runs dir, counter file, suite dict)."""
    from lean.bench.runner import BenchOptions, run_bench

    root = tmp_path_factory.mktemp("bench")
    counter = root / "copy-builds.txt"
    data = tiny_suite(tiny_bert_dir, bbc_csv, counter)
    suite = parse_suite(data, "tiny.yaml")
    results = run_bench(suite, BenchOptions(output=root / "run1", runs_dir=root / "cache", quiet=True))
    return results, root / "run1", root / "cache", counter, data


def row_named(results, name):
    return next(r for r in results["variants"] if r["name"] == name)


def run_cli(monkeypatch, capsys, *args):
    """Run `lean ARGS` through lean.cli.main in this process: (exit code, stdout, stderr)."""
    from lean import cli

    monkeypatch.setattr(sys, "argv", ["lean", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err

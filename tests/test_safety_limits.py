"""Resource bombs refused up front (issue 27, part 3): each size that can only end in the OOM killer is one
line naming the limit, before any work; and a killed `lean bench` leaves no measuring child behind.

    python -m pytest tests/test_safety_limits.py -x -q
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_safety import assert_refused

from conftest import invoke
from lean import limits


@pytest.fixture
def model(tmp_path, tiny_bert_dir) -> Path:
    """A copy of the tiny BERT teacher, free to damage."""
    return Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))


def test_suite_batch_size_past_the_limit(tmp_path, model):
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({"task": "bbc-news", "base": str(model), "teacher": str(model),
                                     "variants": {"fp32": {}}, "measure": {"batch_sizes": [1, 100_000_000]}}))
    assert_refused(invoke("bench", str(suite), "-o", str(tmp_path / "out")),
                   f"batch size 100000000 is above the limit of {limits.MAX_BATCH_SIZE}")
    suite.write_text(yaml.safe_dump({"task": "bbc-news", "base": str(model), "teacher": str(model),
                                     "variants": {"fp32": {}}, "measure": {"seq_lengths": [10**9]}}))
    assert_refused(invoke("bench", str(suite), "-o", str(tmp_path / "out")), "above the limit of")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value, limit", [
    ("num_labels", 10**12, limits.MAX_NUM_LABELS),
    ("vocab_size", 10**12, limits.MAX_VOCAB_SIZE),
    ("hidden_size", 10**9, limits.MAX_WIDTH),
    ("num_hidden_layers", 10**7, limits.MAX_LAYERS),
    ("max_position_embeddings", 10**10, limits.MAX_POSITIONS),
])
def test_config_json_sizes_past_the_limit(tmp_path, model, key, value, limit):
    config = json.loads((model / "config.json").read_text())
    config[key] = value
    (model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    for args in (["distill", "--teacher", str(model), "--student-layers", "1", "-o", str(out)],
                 ["quantize", str(model), "-m", "dynamic-int8", "-o", str(out)]):
        assert_refused(invoke(*args), f'"{key}" {value} is above the limit of {limit}')
    assert not out.exists()


def test_tfidf_ngram_max_past_the_limit(tmp_path, bbc_csv):
    from lean.bench.classical import TfidfLogregConfig, build_tfidf_logreg, load_tfidf_logreg
    from lean.errors import LeanError
    from lean.runtime import TfidfModel

    with pytest.raises(LeanError, match=f"ngram_max 1000000000 is above the limit of {limits.MAX_NGRAM}"):
        TfidfLogregConfig(ngram_max=10**9)
    fitted = build_tfidf_logreg({"spec": str(bbc_csv), "split_seed": 42}, TfidfLogregConfig(), tmp_path / "fit")
    manifest = json.loads((fitted / "lean.json").read_text())
    manifest["config"]["ngram_max"] = 10**9
    (fitted / "lean.json").write_text(json.dumps(manifest))
    with pytest.raises(LeanError, match="above the limit of"):  # the harness refuses it
        load_tfidf_logreg(fitted)
    # the runtime never makes n-grams longer than its vocabulary holds: a long text answers at once
    model = TfidfModel(fitted)
    assert model.ngram_max == 2
    start = time.monotonic()
    model.predict(["word " * 20_000])
    assert time.monotonic() - start < 5
    res = invoke("predict", str(fitted), "Shares rose after profits beat forecasts")
    assert res.returncode == 0 and json.loads(res.stdout)["label"]


def test_optimize_seq_length_past_the_models_positions(tmp_path, model):
    out = tmp_path / "opt"
    assert_refused(invoke("optimize", str(model), "--max-drop", "1", "--seq-length", "100000", "-o", str(out)),
                   "--seq-length 100000 is above the limit of 512 tokens")
    assert_refused(invoke("optimize", str(model), "--max-drop", "1", "--seq-length", "10000000", "-o", str(out)),
                   f"--seq-length 10000000 is above the limit of {limits.MAX_SEQ_LENGTH}")
    assert_refused(invoke("optimize", str(model), "--max-drop", "1", "--batch-size", "100000000", "-o", str(out)),
                   f"--batch-size 100000000 is above the limit of {limits.MAX_BATCH_SIZE}")
    assert not out.exists()


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # exited; a zombie waits only for init to reap it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_parent_takes_its_measuring_child_with_it(tmp_path):
    """A parent started like `lean bench` starts its child through lean.bench.launcher.Child, then is SIGKILLed
    (no handler, no cleanup runs): the child, in a session of its own, must not live on."""
    code = ("import sys, time\nfrom pathlib import Path\nfrom lean.bench.launcher import Child, child_env\n"
            "child = Child(['-c', 'import time; time.sleep(120)'], Path(sys.argv[1]), child_env(1), print)\n"
            "print(child.proc.pid, flush=True)\ntime.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "child.log")], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    assert not _gone(child_pid)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while not _gone(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _gone(child_pid):
        os.killpg(child_pid, signal.SIGKILL)  # leave nothing behind, then fail
        pytest.fail("the child outlived its killed parent")

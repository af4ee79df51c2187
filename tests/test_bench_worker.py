"""Tests for the measuring subprocess's side of lean.bench: inputs, latency, memory, the worker entry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def test_latency_texts_are_real_texts_long_enough_for_the_length():
    from lean.bench.inputs import latency_texts

    texts = ["short", "long one", "tiny", "long two"]
    batches, info = latency_texts(texts, [10, 300, 50, 400], batch_size=3, seq_length=256, n_batches=2)
    assert batches == [["long one", "long two", "long one"], ["long two", "long one", "long two"]]
    assert info["pool"] == 2 and info["how"].startswith("truncated")
    _, info = latency_texts(texts, [10, 20, 30, 40], batch_size=2, seq_length=256, n_batches=1)
    assert info["how"].startswith("padded")


def test_time_cell_warms_up_then_repeats_within_the_cell_budget():
    import time

    from lean.bench.latency import time_cell

    calls = []

    def forward(batch):
        calls.append(batch)
        time.sleep(0.02)

    times, warmed = time_cell(forward, lambda: None, ["a", "b"], warmup=3, repeats=4, min_repeats=2, max_cell_s=None)
    assert warmed == 3 and len(times) == 4 and calls == ["a", "b", "a", "a", "b", "a", "b"]
    assert all(t >= 0.02 for t in times)
    calls.clear()
    times, warmed = time_cell(forward, lambda: None, ["a"], warmup=10, repeats=50, min_repeats=3, max_cell_s=0.05)
    # warm-up stops at max_cell_s / 2; timing at max_cell_s, 3 runs at least
    assert warmed in (1, 2) and len(times) == 3

    def slow_forward(batch):
        calls.append(batch)
        time.sleep(0.1)

    calls.clear()
    times, warmed = time_cell(slow_forward, lambda: None, ["a"], warmup=3, repeats=2, min_repeats=2, max_cell_s=None)
    assert warmed == 1 and len(calls) == 3  # a call of 0.1 s or more: warm after one


def test_serve_latency_times_each_visit_through_the_distinct_batches(capsys):
    # a TF-IDF call's cost depends on the text, and one batch timed over and over finds its
    # vocabulary entries in the cache: the timed calls go on through the batches from visit to visit
    from lean.bench.latency import serve_latency

    calls = []

    class Backend:
        def forward(self, batch):
            calls.append(batch)

        def sync(self):
            pass

    entry = {"cell": {"batch_size": 1, "seq_length": 8}, "times": [], "warmed": None, "batches": list("abcde")}
    requests = ["time 1 8 3 2", "time 1 8 3", "time 1 9 1", "end"]
    serve_latency(Backend(), [entry], {"warmup": 0, "max_cell_s": None}, requests)
    assert calls == ["a", "b"] + ["a", "b", "c"] + ["d", "e", "a"]  # 2 untimed, 3 timed; then 3 timed
    assert len(entry["times"]) == 6
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "@ready" and out[1].startswith("@times 1 8 ") and len(out[1].split()[3].split(",")) == 3
    assert out[3] == "@times 1 9 -"  # a cell this variant does not measure


def test_measure_subprocess_started_early_waits_for_go(tmp_path, bbc_csv):
    import subprocess

    spec, result, task = tmp_path / "spec.json", tmp_path / "result.json", tmp_path / "task.json"
    task.write_text(json.dumps({"spec": str(bbc_csv), "text_column": None, "label_column": None, "split_seed": 42}))
    command = [sys.executable, "-m", "lean.bench.worker", str(spec), str(result), "--wait"]
    ended = subprocess.run(command + ["tfidf-logreg", str(task)], input="", capture_output=True, text=True,
                           timeout=120)
    assert ended.returncode == 0 and not result.exists()  # stdin closed before "go": nothing measured
    wrong = subprocess.run(command + ["tensorflow", str(task)], input="", capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "--wait takes one of torch, onnx, tfidf-logreg" in wrong.stderr


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads Linux /proc")
def test_peak_rss_is_the_measuring_process_own_not_its_parents():
    # ru_maxrss of a forked-then-exec'd child starts at the parent's RSS; the row must not inherit it
    ballast = bytearray(400 * 2**20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    code = "from lean.bench.memory import rss_now_mb, rss_peak_mb; print(rss_now_mb(), rss_peak_mb())"
    now, peak = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                          check=True).stdout.split())
    del ballast
    assert 0 < now <= peak < 300

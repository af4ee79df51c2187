"""Tests for the language-model side of lean bench (lean.bench.lm, the LM side of the backends, lean.bench.report_lm).

    python -m pytest tests/test_bench_lm.py -x -q

One tiny suite runs once per session: the 2-layer random Llama of tests/conftest.py as the teacher
(baseline) and its ONNX export with KV cache, on a .txt corpus of 40 BBC articles (8 test
articles), perplexity over 600 tokens, greedy generation of 6 tokens at batch 1 and 2.
"""

from __future__ import annotations

import json
import math

import pytest
import yaml
from conftest import bbc_rows

from lean.errors import LeanError


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm-corpus") / "bbc.txt"
    path.write_text("\n\n".join(r["text"].replace("\n\n", "\n") for r in bbc_rows(8)))
    return path


MEASURE = {"latency": False, "repeats": 1, "threads": 1, "timeout_s": 300,
           "perplexity": {"window": 64, "stride": 32, "max_tokens": 600, "batch_size": 4},
           "generation": {"batch_sizes": [1, 2], "new_tokens": 6, "prompt_tokens": 16, "repeats": 1, "warmup": 1}}


@pytest.fixture(scope="session")
def lm_run(tiny_llama_dir, corpus, tmp_path_factory):
    from lean.bench.runner import BenchOptions, run_bench
    from lean.bench.suite import parse_suite

    suite = parse_suite({"name": "lm-tiny", "task": str(corpus), "base": str(tiny_llama_dir),
                         "teacher": str(tiny_llama_dir), "measure": MEASURE,
                         "variants": {"teacher": {}, "onnx": {"steps": [{"export": {"max_eval_samples": 2}}]}}})
    out = tmp_path_factory.mktemp("bench-lm") / "run"
    runs = tmp_path_factory.mktemp("bench-lm-cache")
    results = run_bench(suite, BenchOptions(output=out, runs_dir=runs, quiet=True))
    return results, out


def _row(results, name):
    return next(r for r in results["variants"] if r["name"] == name)


@pytest.mark.optimum  # the suite's ONNX variant exports a causal LM, which needs optimum-onnx
def test_lm_suite_measures_perplexity_and_generation(lm_run):
    results, out = lm_run
    teacher, onnx = _row(results, "teacher"), _row(results, "onnx")
    assert teacher["status"] == "ok", teacher.get("error")
    assert onnx["status"] == "ok", onnx.get("error")
    for row in (teacher, onnx):
        q = row["quality"]
        # a random model over a ~500-token vocabulary: perplexity of the order of the vocabulary
        assert q["window"] == 64 and q["stride"] == 32 and q["tokens"] == 599 and 50 < q["perplexity"] < 5000
        cells = {c["batch_size"]: c for c in row["generation"]["cells"]}
        assert sorted(cells) == [1, 2]
        for b, cell in cells.items():
            assert cell["ttft_ms"] > 0 and cell["decode_tokens_per_s"] > 0
            assert len(cell["outputs"]) == 2 * b  # warm-up + timed round, different prompts
        assert row["memory"]["peak_rss_mb"] > 0
    assert teacher["generation"]["runtime"] == "transformers generate"
    assert onnx["generation"]["runtime"].startswith("onnxruntime")
    # the fp32 export scores the same tokens with the same windows: same perplexity
    assert math.isclose(onnx["quality"]["perplexity"], teacher["quality"]["perplexity"], rel_tol=1e-4)
    ratios = onnx["vs_baseline"]
    assert math.isclose(ratios["perplexity_ratio"], 1.0, abs_tol=1e-3)
    for b in (1, 2):  # greedy with the KV cache gives PyTorch's tokens on every prompt
        assert ratios[f"greedy_match_b{b}"] == {"identical": 2 * b, "prompts": 2 * b}
        assert ratios[f"decode_speedup_b{b}"] > 0
    saved = json.loads((out / "results.json").read_text())
    assert _row(saved, "onnx")["generation"]["cells"][0]["outputs"]
    report = (out / "report.md").read_text()
    assert "## Language model" in report and "`onnx`" in report and "4/4" in report
    assert "| accuracy |" not in report and "![perplexity against decode speed](pareto.png)" in report
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_torch_generation_outputs_are_plain_greedy_generate(lm_run, tiny_llama_dir):
    """The timing streamer does not change what generate returns: the recorded ids are greedy's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lean.data import load_task

    results, _ = lm_run
    task = load_task(results["suite"]["task"])
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    cell = _row(results, "teacher")["generation"]["cells"][0]
    for index, ids in cell["outputs"]:
        prompt = tok(task.test.texts[index], add_special_tokens=False)["input_ids"][:16]
        with torch.inference_mode():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                                 pad_token_id=tok.eos_token_id)
        expected = out[0, 16:].tolist()
        if tok.eos_token_id in expected:
            expected = expected[:expected.index(tok.eos_token_id)]
        assert ids == expected


def test_pareto_front_prefers_fast_and_low_perplexity():
    from lean.bench.stats import pareto_front

    points = [("a", 10.0, 20.0), ("b", 20.0, 25.0), ("c", 15.0, 30.0), ("d", 5.0, 19.0)]
    assert [p[0] for p in pareto_front(points, x="higher", y="lower")] == ["b", "a", "d"]  # c: slower and worse than b


def test_windows_score_every_token_once():
    from lean.lm import windows

    for n, window, stride in [(600, 64, 32), (10, 4, 3), (65, 64, 16), (3, 8, 2)]:  # stride < window
        scored = [p for b, e, first in windows(n, window, stride) for p in range(first, e)]
        assert scored == list(range(1, n))
        # every window after the first gives its scored tokens window - stride tokens of context
        assert all(e - b <= window and (b == 0 or first - b == window - stride)
                   for b, e, first in windows(n, window, stride))


def _suite(**changes):
    data = {"task": "bbc-news-lm", "base": None,
            "teacher": [{"finetune": {"init_config": "llama-tiny", "epochs": 1}}], "variants": {"teacher": {}}}
    data.update(changes)
    return data


def test_suite_base_null_trains_the_teacher_from_an_init_config():
    from lean.bench.chains import source_key
    from lean.bench.suite import parse_suite

    suite = parse_suite(_suite())
    assert suite.base == "init:llama-tiny" and source_key(suite.base) == "init:llama-tiny"
    with pytest.raises(LeanError, match="base: null, which needs a teacher"):
        parse_suite(_suite(teacher=[{"finetune": {"epochs": 1}}]))


@pytest.mark.parametrize("measure, message", [
    ({"perplexity": {"windw": 64}}, "unknown key 'windw' in measure.perplexity"),
    ({"perplexity": {"window": 64, "stride": 128}}, "0 < stride <= window"),
    ({"generation": {"batch_sizes": [0]}}, "batch_sizes must be positive"),
    ({"generation": {"new_tokens": 1}}, "new_tokens >= 2"),
])
def test_bad_lm_measure_options_are_one_line_errors(measure, message):
    from lean.bench.suite import parse_suite

    with pytest.raises(LeanError, match=message):
        parse_suite(_suite(measure=measure))


def test_shipped_lm_suite_parses():
    from pathlib import Path

    from lean.bench.suite import load_suite

    suite = load_suite(Path(__file__).parents[1] / "benchmarks" / "suites" / "lm.yaml")
    assert suite.base.startswith("init:") and suite.baseline == "teacher"
    assert {"teacher", "student", "nf4", "onnx-fp32", "onnx-int8"} <= set(suite.variants)
    assert yaml.safe_load((Path(__file__).parents[1] / "benchmarks" / "suites" / "lm.yaml").read_text())


@pytest.mark.optimum  # the suite's ONNX variant exports a causal LM, which needs optimum-onnx
def test_terminal_line_of_an_lm_row_shows_perplexity_and_decode_speed(lm_run):
    import io

    from rich.console import Console

    from lean.bench.terminal import print_row

    results, _ = lm_run
    console = Console(file=io.StringIO(), width=200)
    print_row(console, _row(results, "onnx"), results)
    line = console.file.getvalue()
    assert "onnx: perplexity " in line and "b1 decode " in line and "tok/s, TTFT" in line


@pytest.mark.optimum  # the suite's ONNX variant exports a causal LM, which needs optimum-onnx
def test_terminal_table_of_an_lm_run_has_perplexity_and_decode_columns(lm_run):
    import io

    from rich.console import Console

    from lean.bench.terminal import results_table

    results, _ = lm_run
    console = Console(file=io.StringIO(), width=250)
    console.print(results_table(results))
    text = console.file.getvalue()
    assert "perplexity (×)" in text and "b1 decode tok/s (×)" in text and "b2 decode tok/s (×)" in text
    assert "accuracy" not in text
    onnx = _row(results, "onnx")
    assert f"{onnx['quality']['perplexity']:.2f} (1.00×)" in text

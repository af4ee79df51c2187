"""Tests for a whole lean bench run (lean.bench.runner): rows measured against references, failures as rows,
the files written, the cache reused, Ctrl-C, subprocesses started early, --rigorous, the CLI.

    python -m pytest tests/test_bench_runner.py -x -q
"""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

import pytest
import yaml
from bench_support import fake_steps, row_named, run_cli, tiny_run, tiny_suite

from lean.bench.results import SCHEMA_VERSION
from lean.bench.suite import load_suite, parse_suite
from lean.errors import LeanError

FIXTURES = (fake_steps, tiny_run)  # pytest finds fixtures by their name in the test module


def test_variant_selection_requirements_and_directories_suite(tmp_path, tiny_bert_dir, fake_steps):
    from lean.bench.runner import missing_requirement, select_variants
    from lean.bench.suite import directories_suite

    suite = parse_suite(tiny_suite(Path("b"), Path("t.csv"), tmp_path / "c"), check_steps=False)
    assert select_variants(suite, ["tfidf-logreg"]) == ["fp32", "tfidf-logreg"]  # the baseline always runs first
    with pytest.raises(LeanError, match="unknown variant 'nope'"):
        select_variants(suite, ["nope"])
    assert "no_such_package_xyz" in missing_requirement(suite.variants["needs-gpu"], "cuda")
    assert "CUDA" in missing_requirement(suite.variants["needs-gpu"], "cpu")
    assert missing_requirement(suite.variants["fp32"], "cpu") is None

    dirs = directories_suite([str(tiny_bert_dir), str(tiny_bert_dir)])
    assert list(dirs.variants) == ["tiny-bert", "tiny-bert-2"] and dirs.task == "bbc-news"  # task from lean.json
    with pytest.raises(LeanError, match="pass --task"):
        directories_suite([str(tmp_path)])


def test_measured_rows_match_references(tiny_run, tiny_bert_dir, bbc_csv):
    import torch

    from lean.bench.classical import fit_tfidf_logreg
    from lean.data import load_task
    from lean.metrics import classification_metrics, predict_logits
    from lean.models import load_model, load_tokenizer

    results, *_ = tiny_run
    fp32 = row_named(results, "fp32")
    assert fp32["status"] == "ok", fp32["error"]
    task = load_task(str(bbc_csv))
    model, tok = load_model(str(tiny_bert_dir)), load_tokenizer(str(tiny_bert_dir))
    torch.set_num_threads(1)
    predicted = predict_logits(model, tok, task.test.texts, 512).argmax(-1).tolist()
    reference = classification_metrics(task.test.labels, predicted,
                                       task.label_names)
    assert fp32["quality"]["accuracy"] == reference["accuracy"] and fp32["quality"]["n"] == len(task.test)
    # same weights, same answer
    assert row_named(results, "copied")["quality"]["accuracy"] == fp32["quality"]["accuracy"]

    classical = fit_tfidf_logreg(task.train.texts, task.train.labels)
    expected = classification_metrics(task.test.labels, classical.predict(task.test.texts).tolist(), task.label_names)
    tfidf = row_named(results, "tfidf-logreg")
    assert tfidf["quality"]["accuracy"] == expected["accuracy"]
    # fitted once into the runs dir like a step's directory, and measured from there
    fit, = tfidf["chain"]
    assert fit["step"] == "tfidf-logreg" and fit["cached"] is False and tfidf["model_dir"] == fit["dir"]
    assert tfidf["size"]["weights_bytes"] == sum(f.stat().st_size for f in Path(fit["dir"]).iterdir()
                                                 if f.name not in ("lean.json", ".lean-output.json"))
    assert tfidf["size"]["fit_s"] > 0 and tfidf["timing"]["build_s"] > 0

    assert fp32["size"]["params"] == sum(p.numel() for p in model.parameters())
    assert fp32["size"]["weights_bytes"] == (Path(tiny_bert_dir) / "model.safetensors").stat().st_size
    cell, = fp32["latency"]
    # the suite's 2 repeats at least; rounds the machine ran slower in are made up with more calls
    assert (cell["batch_size"], cell["seq_length"]) == (2, 64) and cell["count"] >= 2
    assert 0 < cell["median_ms"] <= cell["p90_ms"] <= cell["p99_ms"] and cell["speedup"] == 1.0
    assert cell["inputs"]["how"].startswith("truncated") and cell["inputs"]["pool"] > 0
    memory = fp32["memory"]
    assert 0 < memory["bare_rss_mb"] < memory["peak_rss_mb"] and fp32["threads"] == 1
    assert row_named(results, "copied")["vs_baseline"]["memory_ratio"] > 0


def test_failures_are_rows_and_the_run_goes_on(tiny_run):
    results, *_ = tiny_run
    statuses = {r["name"]: r["status"] for r in results["variants"]}
    assert statuses == {"fp32": "ok", "copied": "ok", "boom": "failed", "slow": "timeout", "needs-gpu": "skipped",
                        "tfidf-logreg": "ok"}
    boom = row_named(results, "boom")
    assert boom["phase"] == "build" and "the boom step always raises" in boom["error"]
    assert "0.5 s" in row_named(results, "slow")["error"]
    assert row_named(results, "needs-gpu")["error"].startswith("needs")


def test_report_files(tiny_run):
    import csv

    import matplotlib.image

    results, out, *_ = tiny_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION and on_disk["run"]["threads"] == 1
    # the tolerance the quiet rounds were chosen with is the run's, and the reading guide quotes it
    from lean.bench.markdown import to_markdown
    from lean.bench.stats import QUIET_TOLERANCE

    assert on_disk["run"]["quiet_tolerance"] == QUIET_TOLERANCE
    assert f"more than {QUIET_TOLERANCE:.0%} past the cell's quietest round" in (out / "report.md").read_text()
    assert "more than 37% past" in to_markdown({**on_disk, "run": {**on_disk["run"], "quiet_tolerance": 0.37}})
    assert on_disk["environment"]["cpu"] and "torch" in on_disk["environment"]["versions"]
    assert [r["name"] for r in on_disk["variants"]] == ["fp32", "copied", "boom", "slow", "needs-gpu", "tfidf-logreg"]
    assert on_disk["variants"][1]["config"]["steps"][0]["copy"]["counter"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["variant"] for r in rows} == {r["name"] for r in on_disk["variants"]}
    assert float(next(r for r in rows if r["variant"] == "fp32")["median_ms"]) > 0
    report = (out / "report.md").read_text()
    for name in ("fp32", "copied", "tfidf-logreg"):
        assert f"`{name}`" in report
    assert "**failed**" in report and "**timeout**" in report and "**skipped**" in report
    image = matplotlib.image.imread(out / "pareto.png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert (out / "logs" / "fp32.measure.log").is_file()
    # latency was timed in turn across the loaded variants (measure.interleave, the default)
    assert json.loads((out / "logs" / "fp32.measure.json").read_text())["interleave"] is True
    assert not any("pending" in r for r in on_disk["variants"])
    # every timed call is kept by round; the figures come from the quiet rounds' calls (all of them when
    # no round was set aside), and the speedups over the baseline get their interval from those rounds
    fp32_cell, = on_disk["variants"][0]["latency"]
    quiet = [v for v in fp32_cell["visits"] if v["quiet"]]
    assert sum(len(v["ms"]) for v in quiet) == fp32_cell["count"] and "speedup_interval" not in fp32_cell
    assert fp32_cell["rounds"] == {"quiet": len(quiet), "of": len(fp32_cell["visits"])}
    assert fp32_cell.get("all_rounds", {"count": fp32_cell["count"]})["count"] == \
        sum(len(v["ms"]) for v in fp32_cell["visits"])
    copied_cell, = row_named(on_disk, "copied")["latency"]
    # an interval, or why there is none; two repeats make two rounds (a machine running slow adds rounds),
    # too few for an interval, and the cell says so instead of reading ±0%
    assert ("speedup_interval" in copied_cell) != ("interval_note" in copied_cell)
    if copied_cell["rounds"]["of"] < 4:
        assert copied_cell["interval_note"].endswith(": too few for an interval (at least 4)")


def test_second_run_reuses_built_steps(tiny_run, monkeypatch, capsys, tmp_path):
    results, _, cache, counter, data = tiny_run
    copied = row_named(results, "copied")
    assert copied["chain"][0]["cached"] is False and counter.read_text().splitlines() == ["a"]
    built = Path(copied["model_dir"])
    mtime = (built / "lean.json").stat().st_mtime_ns

    # one variant after another this time (measure.interleave: false), with glibc's own malloc settings
    # (measure.reuse_memory: false): the same figures come out
    second = dict(data, baseline="copied", variants={"copied": data["variants"]["copied"],
                                                     "tfidf-logreg": data["variants"]["tfidf-logreg"]},
                  measure=dict(data["measure"], interleave=False, reuse_memory=False))
    suite_file = tmp_path / "again.yaml"
    suite_file.write_text(yaml.safe_dump(second))
    code, out, err = run_cli(monkeypatch, capsys, "bench", str(suite_file), "-o", str(tmp_path / "run2"),
                          "--runs-dir", str(cache))
    assert code == 0, err
    again = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert again["run"]["steps_built"] == 0 and again["variants"][0]["chain"][0]["cached"] is True
    assert counter.read_text().splitlines() == ["a"]  # the copy step did not run again
    assert (built / "lean.json").stat().st_mtime_ns == mtime
    assert again["variants"][0]["quality"]["accuracy"] == copied["quality"]["accuracy"]  # exact across runs
    assert again["variants"][0]["latency"][0]["count"] >= 2 and copied["latency"][0]["count"] >= 2
    assert json.loads((tmp_path / "run2" / "logs" / "copied.measure.json").read_text())["interleave"] is False
    # each finished run joins the machine's history of baseline medians (lean.bench.history)
    history = [json.loads(line) for line in (cache / "history.jsonl").read_text().splitlines()]
    assert [h["key"]["baseline"] for h in history] == ["fp32", "copied"]
    base_cell = row_named(results, "fp32")["latency"][0]
    # (a cell the run could not support, on a loaded machine, is kept out of the history)
    assert history[0]["cells"] == ({} if base_cell.get("unreliable") else {"b2x64": base_cell["median_ms"]})
    assert results["run"]["machine_state"]["earlier_runs"] == 0 == again["run"]["machine_state"]["earlier_runs"]
    # the fitted tfidf-logreg is reused too: same directory, same answers
    tfidf, first_tfidf = row_named(again, "tfidf-logreg"), row_named(results, "tfidf-logreg")
    assert tfidf["chain"][0]["cached"] is True and tfidf["model_dir"] == first_tfidf["model_dir"]
    assert tfidf["quality"] == first_tfidf["quality"] and tfidf["size"]["fit_s"] == first_tfidf["size"]["fit_s"]
    assert "MALLOC_MMAP_MAX_" not in again["variants"][0]["memory"]["malloc_env"]
    assert copied["memory"]["malloc_env"]["MALLOC_MMAP_MAX_"] == "0"  # the first run kept freed memory (default)
    assert "copied" in out and "results.json" in out  # the table and where the files are


def test_ctrl_c_leaves_finished_rows_written(tmp_path, tiny_bert_dir, bbc_csv, monkeypatch):
    from lean.bench import runner

    calls = []

    class InterruptSecond(runner.VariantRun):
        def row(self):
            calls.append(self.variant.name)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return super().row()

    data = tiny_suite(tiny_bert_dir, bbc_csv, tmp_path / "c")
    data["baseline"] = "needs-gpu"  # skipped without a subprocess: the finished row is cheap
    suite = parse_suite({**data, "variants": {k: data["variants"][k] for k in ("needs-gpu", "fp32", "slow")}})
    monkeypatch.setattr(runner, "VariantRun", InterruptSecond)
    with pytest.raises(KeyboardInterrupt):
        runner.run_bench(suite, runner.BenchOptions(output=tmp_path / "out", runs_dir=tmp_path / "cache", quiet=True))
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["name"] for r in written["variants"]] == ["needs-gpu"]
    assert written["run"]["interrupted"] is True and written["run"]["not_run"] == ["fp32", "slow"]
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "pareto.png").is_file()


def test_next_variants_subprocess_starts_early_and_is_dismissed_when_its_build_fails(tmp_path, tiny_bert_dir, bbc_csv,
                                                                                     fake_steps, monkeypatch):
    from lean.bench import runner

    real, started = runner.start_early, {}

    def recording(variant, threads, logs):
        started[variant.name] = child = real(variant, threads, logs)
        return child

    monkeypatch.setattr(runner, "start_early", recording)
    data = tiny_suite(tiny_bert_dir, bbc_csv, tmp_path / "c")
    variants = {k: data["variants"][k] for k in ("fp32", "tfidf-logreg", "boom")}
    suite = parse_suite({**data, "variants": {"fp32": variants.pop("fp32"), "sdpa": {"load": {"attention": "sdpa"}},
                                              **variants}})
    results = runner.run_bench(suite, runner.BenchOptions(output=tmp_path / "out", runs_dir=tmp_path / "cache",
                                                          quiet=True))
    rows = {r["name"]: r for r in results["variants"]}
    # each subprocess after the first started while the previous variant was scored, and measured its row
    assert set(started) == {"sdpa", "tfidf-logreg", "boom"} and rows["sdpa"]["status"] == "ok"
    # waiting imported what a fresh start imports before it takes the bare RSS, nothing more
    assert rows["sdpa"]["memory"]["bare_rss_mb"] == pytest.approx(rows["fp32"]["memory"]["bare_rss_mb"], rel=0.1)
    assert rows["tfidf-logreg"]["status"] == "ok" and rows["tfidf-logreg"]["quality"]["accuracy"] > 0
    assert rows["tfidf-logreg"]["latency"][0]["count"] >= 1 and rows["fp32"]["status"] == "ok"
    assert rows["tfidf-logreg"]["timing"]["started_early"] is True and rows["fp32"]["timing"]["started_early"] is False
    # boom's build failed: its waiting subprocess was told nothing and ended without a result
    assert rows["boom"]["status"] == "failed" and rows["boom"]["phase"] == "build"
    # (0 once it read END; SIGINT where a loaded machine kept it importing past the runner's 10 s wait for that)
    assert started["boom"].proc.returncode in (0, -signal.SIGINT)
    assert not (tmp_path / "out" / "logs" / "boom.result.json").exists()
    assert all(child.proc.poll() is not None for child in started.values())


def test_ctrl_c_before_the_interleaved_latency_keeps_loaded_rows_as_interrupted(tmp_path, tiny_bert_dir, bbc_csv,
                                                                               monkeypatch):
    from lean.bench import runner

    calls, processes = [], []

    class InterruptThird(runner.VariantRun):
        def row(self):
            calls.append(self.variant.name)
            if len(calls) == 3:
                raise KeyboardInterrupt
            row = super().row()
            processes.extend(p.process.proc for p in self.run.pending)
            processes.extend(child.proc for child in self.run.early.values())  # the next variant's, started early
            return row

    data = tiny_suite(tiny_bert_dir, bbc_csv, tmp_path / "c")
    suite = parse_suite({**data, "variants": {k: data["variants"][k] for k in ("fp32", "tfidf-logreg", "slow")}})
    monkeypatch.setattr(runner, "VariantRun", InterruptThird)
    with pytest.raises(KeyboardInterrupt):
        runner.run_bench(suite, runner.BenchOptions(output=tmp_path / "out", runs_dir=tmp_path / "cache", quiet=True))
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    fp32, tfidf = written["variants"]
    assert fp32["status"] == tfidf["status"] == "interrupted" and "latency" in fp32["error"]
    assert fp32["quality"]["accuracy"] > 0 and "pending" not in fp32  # what it measured before stays
    assert processes and all(proc.poll() is not None for proc in processes)  # no loaded subprocess left behind


def test_cli_bad_suite_exits_2_with_one_line(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""
        task: bbc-news
        base: minilm-l6
        variants: {fp32: {laod: {attention: eager}}}
    """))
    code, _, err = run_cli(monkeypatch, capsys, "bench", str(bad), "-o", str(tmp_path / "o"))
    assert code == 2 and "unknown key 'laod'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(monkeypatch, capsys, "bench", str(bad), "x.yaml")
    assert code == 2 and "not both" in err
    code, out, _ = run_cli(monkeypatch, capsys, "bench", "--list")
    assert code == 0 and "fp16" in out and "student-l3+onnx-int8" in out


def test_rigorous_times_every_cell_three_times_as_long(tmp_path, tiny_bert_dir, bbc_csv, monkeypatch, capsys, tiny_run):
    from lean.bench import runner

    default = load_suite()
    longer = default.longer(runner.RIGOROUS_FACTOR)
    for before, after in [(default.measure, longer.measure)] + [
            (default.variants[n].measure, longer.variants[n].measure) for n in default.variants]:
        assert (after.repeats, after.min_repeats, after.max_cell_s) == \
            (3 * before.repeats, 3 * before.min_repeats, 3 * before.max_cell_s)
        assert (after.warmup, after.batch_sizes, after.timeout_s) == \
            (before.warmup, before.batch_sizes, before.timeout_s)
    assert longer.variants["sdpa"].steps == default.variants["sdpa"].steps

    data = tiny_suite(tiny_bert_dir, bbc_csv, tmp_path / "c")
    suite = parse_suite({**data, "variants": {k: data["variants"][k] for k in ("fp32", "tfidf-logreg")}})
    results = runner.run_bench(suite, runner.BenchOptions(output=tmp_path / "out", runs_dir=tmp_path / "cache",
                                                          quiet=True, rigorous=True))
    assert results["run"]["rigorous"] is True and results["suite"]["measure"]["repeats"] == 6  # 2 in the suite
    assert "`--rigorous`" in (tmp_path / "out" / "report.md").read_text()
    plain, plain_dir = tiny_run[0], tiny_run[1]  # the same suite without the flag: 2 calls a cell
    # (a busy machine's opening line may suggest --rigorous; the header never claims it)
    assert plain["run"]["rigorous"] is False and "`--rigorous` (every latency cell" not in \
        (plain_dir / "report.md").read_text()
    assert all(c["count"] < 6 for r in plain["variants"] if r["status"] == "ok" and r.get("latency")
               for c in r["latency"] if "count" in c)
    for row in results["variants"]:
        cell = row["latency"][0]
        assert row["status"] == "ok" and (cell.get("all_rounds") or cell)["count"] >= 6, row["name"]

    seen = []

    def stop(suite, options, console=None):
        seen.append(options.rigorous)
        raise LeanError("stopped before measuring")

    monkeypatch.setattr(runner, "run_bench", stop)
    for args in (["--rigorous"], []):
        code, _, err = run_cli(monkeypatch, capsys, "bench", *args, "-o", str(tmp_path / "cli"))
        assert code == 2 and "stopped before measuring" in err
    assert seen == [True, False]


def test_training_progress_eta_ignores_the_setup_before_the_first_step():
    from lean.bench.progress import training_progress

    # step 1 reported 100 s in (teacher logits cached first), then 10 steps in 5 s: 0.5 s a step
    assert training_progress("build distill (1/1)", 1, 196, (1, 100.0), 100.0) == \
        "build distill (1/1): 1/196 training steps"
    assert training_progress("build distill (1/1)", 11, 196, (1, 100.0), 105.0) == \
        "build distill (1/1): 11/196 training steps, eta 1:32"

"""lean optimize: the space, the strategy and the run directory, over a fake measure function.

The fake stands in for the harness: it returns figures from a table (by candidate name, validation and
test apart), counts every call by mode, and gives each full measurement a model directory, so these
tests check the search's decisions exactly and fast. tests/test_optimize_bench.py goes through the
real adapter and `lean bench`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lean.errors import LeanError
from lean.optimize import Budget, OptimizeConfig, optimize
from lean.optimize.config import parse_duration
from lean.optimize.space import load_space, parse_space
from lean.optimize.trials import Figures

from conftest import invoke

SPACE = """
name: test
device: cpu
reference: {load: {attention: sdpa}}
probe: {epochs: 1, max_train_samples: 8}
costs: {distill: 100, export: 5, quantize: 2}
students:
  l2: {steps: [{distill: {student_layers: 2}}]}
  l1: {steps: [{distill: {student_layers: 1}}]}
runtimes:
  torch: {load: {attention: sdpa}}
  int8: {steps: [{quantize: {method: dynamic-int8}}]}
  onnx: {steps: [{export: {}}]}
"""

# name -> (validation accuracy, test accuracy, latency ms); the teacher scores 0.90 on both splits
TABLE = {
    "teacher": (0.900, 0.900, 100.0),
    "teacher+int8": (0.895, 0.893, 60.0),   # within 1 point
    "teacher+onnx": (0.900, 0.900, 70.0),
    "l2+torch": (0.893, 0.880, 55.0),      # within on validation, over on test
    "l1+torch": (0.850, 0.850, 30.0),      # over: its chains are never built
    "l2+int8": (0.880, 0.895, 25.0),       # over on validation, within on test: never chosen
    "l2+onnx": (0.892, 0.891, 40.0),
    "l1+int8": (0.840, 0.840, 15.0),
    "l1+onnx": (0.845, 0.845, 20.0),
}


class FakeMeasure:
    def __init__(self, table: dict, root: Path, probe_latency: dict | None = None, interrupt_after: int | None = None):
        self.table, self.root, self.probe_latency = table, root, probe_latency or {}
        self.calls: list[tuple[str, str]] = []
        self.interrupt_after = interrupt_after
        self.probe_fails: set[str] = set()

    def __call__(self, candidate, mode):
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append((candidate.name, mode))
        name = candidate.name.removesuffix("@probe")
        val, test, latency = self.table[name]
        if mode == "probe":
            if name in self.probe_fails:
                return Figures(status="failed", error="export failed validation: logits differ\ntraceback")
            return Figures(latency_ms=self.probe_latency.get(name, latency), weights_bytes=1000)
        model_dir = self.root / "models" / name
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "model.txt").write_text(name)
        return Figures(validation={"accuracy": val}, test={"accuracy": test}, latency_ms=latency,
                       throughput_sps=1000 / latency, weights_bytes=1000, model_dir=str(model_dir), steps_built=1)

    def full(self) -> list[str]:
        return [n for n, m in self.calls if m == "full"]


@pytest.fixture
def space_file(tmp_path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


@pytest.fixture
def teacher(tmp_path) -> Path:
    """A directory that looks like a lean teacher (its lean.json records a task); the fake never loads it."""
    path = tmp_path / "teacher"
    path.mkdir()
    (path / "lean.json").write_text(json.dumps({"step": "finetune", "task": {"spec": "bbc-news", "split_seed": 42}}))
    (path / "config.json").write_text('{"num_hidden_layers": 4}')
    return path


def run(teacher, space_file, out, measure, **options):
    budget = options.pop("budget", Budget(max_drop=1.0))
    config = OptimizeConfig(model=str(teacher), output=str(out), budget=budget, space=str(space_file), **options)
    lines: list[str] = []
    return optimize(config, measure=measure, log=lines.append), lines


def test_space_lists_every_chain_cheapest_first_without_the_reference(space_file):
    names = [c.name for c in load_space(space_file).candidates()]
    assert names == ["teacher+int8", "teacher+onnx", "l2+torch", "l1+torch", "l2+int8", "l1+int8", "l2+onnx", "l1+onnx"]
    builtin = load_space(None, "cpu").candidates()
    runtimes = {c.runtime for c in builtin}
    assert {"dynamic-int8", "bnb-int8", "bnb-nf4", "onnx-O2", "onnx-int8-dynamic", "onnx-int8-static"} <= runtimes
    assert {"l4", "l3", "l2", "narrow-l4"} <= {c.student for c in builtin}
    assert "l3+onnx-int8-dynamic" in {c.name for c in builtin}
    assert {c.runtime for c in load_space(None, "cuda").candidates()} >= {"fp16", "onnx-fp16", "bnb-nf4"}


def test_budget_is_respected_and_the_choice_is_made_on_validation(teacher, space_file, tmp_path):
    measure = FakeMeasure(TABLE, tmp_path)
    summary, lines = run(teacher, space_file, tmp_path / "out", measure)
    # l2+int8 is the fastest that is within the budget on test, and l1+int8 the fastest overall:
    # neither is within it on validation, so the choice is l2+onnx (40 ms, -0.8 points on validation)
    assert summary["chosen"] == "l2+onnx" and summary["met_budget"]
    assert summary["speedup"] == pytest.approx(100 / 40, abs=1e-3)
    assert summary["validation_accuracy_drop"] == pytest.approx(0.8, abs=1e-6)
    assert summary["accuracy_drop"] == pytest.approx(0.9, abs=1e-6)  # test, reported only
    trials = {t["name"]: t for t in json.loads((tmp_path / "out" / "trials.json").read_text())}
    assert trials["l2+int8"]["passed"] is False and trials["l2+torch"]["passed"] is True
    assert (tmp_path / "out" / "best" / "model.txt").read_text() == "l2+onnx"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Chosen: `l2+onnx`" in report and (tmp_path / "out" / "pareto.png").stat().st_size > 1000
    assert "at batch 1 x 128 tokens, one thread per physical core." in report
    assert lines[0].startswith("teacher: measuring it first")  # before the teacher's minutes of work
    assert len(lines) == 2 + len(trials) - 1  # then one progress line per trial (and the teacher's)
    assert all("best " in line or "no passing" in line for line in lines[1:])


def test_relative_budget_and_a_stricter_budget_change_the_choice(teacher, space_file, tmp_path):
    strict, _ = run(teacher, space_file, tmp_path / "a", FakeMeasure(TABLE, tmp_path), budget=Budget(max_drop=0.6))
    assert strict["chosen"] == "teacher+int8"  # l2+onnx loses 0.8 points, l2+torch 0.7
    relative, _ = run(teacher, space_file, tmp_path / "b", FakeMeasure(TABLE, tmp_path),
                      budget=Budget(max_drop=0.8, relative=True))
    assert relative["chosen"] == "l2+torch"  # 0.7/90 = 0.78 % passes; l2+onnx 0.89 % does not


def test_pruning_skips_the_builds_it_says_it_skips(teacher, space_file, tmp_path):
    # with passing candidates known (l2+torch, 55 ms, the best), l1's untrained probe says 65 ms: it cannot win
    measure = FakeMeasure({**TABLE, "l1+torch": (0.899, 0.899, 65.0)}, tmp_path, probe_latency={"l1+torch": 65.0})
    summary, _ = run(teacher, space_file, tmp_path / "out", measure)
    trials = {t["name"]: t for t in json.loads((tmp_path / "out" / "trials.json").read_text()) if t["kind"] != "probe"}
    pruned = {n for n, t in trials.items() if t["status"] == "pruned"}
    assert pruned == {"l1+torch"}
    assert "cannot beat l2+torch (55 ms)" in trials["l1+torch"]["reason"]
    assert "l1+torch" not in measure.full() and ("l1+torch@probe", "probe") in measure.calls

    # a prefix over the budget: l1's chains are never measured, not even as probes
    measure = FakeMeasure(TABLE, tmp_path)
    run(teacher, space_file, tmp_path / "out2", measure)
    trials = {t["name"]: t for t in json.loads((tmp_path / "out2" / "trials.json").read_text())}
    assert trials["l1+int8"]["status"] == trials["l1+onnx"]["status"] == "pruned"
    assert "prefix l1+torch broke the budget" in trials["l1+onnx"]["reason"]
    assert not {"l1+int8", "l1+onnx"} & {n.removesuffix("@probe") for n, _ in measure.calls}
    measured = {n for n, m in measure.calls if m == "full"}
    assert len(measured) == 1 + 8 - 2  # teacher + every candidate but the two pruned

    # a probe that fails to build: its chain is not distilled for a full build that would fail the same way
    measure = FakeMeasure({**TABLE, "l1+torch": (0.899, 0.899, 65.0)}, tmp_path, probe_latency={"l1+torch": 65.0})
    measure.probe_fails = {"l1+int8"}
    run(teacher, space_file, tmp_path / "out3", measure)
    trials = {t["name"]: t for t in json.loads((tmp_path / "out3" / "trials.json").read_text()) if t["kind"] != "probe"}
    assert ("l1+int8@probe", "probe") in measure.calls and "l1+int8" not in measure.full()
    assert trials["l1+int8"]["status"] == "pruned"
    assert trials["l1+int8"]["reason"] == "its untrained probe failed: export failed validation: logits differ"
    assert "l1+onnx" in measure.full()  # its own probe built, so it was distilled and measured


def test_a_resumed_run_measures_nothing_twice(teacher, space_file, tmp_path):
    first = FakeMeasure(TABLE, tmp_path)
    summary, _ = run(teacher, space_file, tmp_path / "out", first, max_trials=3)
    assert "--max-trials 3" in summary["stop_reason"] and len([n for n in first.full() if n != "teacher"]) == 3
    with pytest.raises(LeanError, match="--resume"):
        run(teacher, space_file, tmp_path / "out", FakeMeasure(TABLE, tmp_path))
    second = FakeMeasure(TABLE, tmp_path)
    summary, lines = run(teacher, space_file, tmp_path / "out", second, resume=True)
    assert not set(first.calls) & set(second.calls)
    assert summary["chosen"] == "l2+onnx" and any("(resumed)" in line for line in lines)
    third = FakeMeasure(TABLE, tmp_path)
    run(teacher, space_file, tmp_path / "out", third, resume=True)
    assert third.calls == []


def test_no_passing_candidate_is_said_plainly_and_the_closest_is_kept(teacher, space_file, tmp_path):
    table = {n: (0.80 + 0.001 * i, 0.80, lat) for i, (n, (_, _, lat)) in enumerate(TABLE.items())}
    table["teacher"] = (0.95, 0.95, 100.0)
    summary, _ = run(teacher, space_file, tmp_path / "out", FakeMeasure(table, tmp_path))
    # measured: teacher+int8, teacher+onnx, l2+torch, l1+torch (the students' chains are pruned: their
    # prefixes broke the budget); l1+torch loses the least, 14.6 points
    closest = "l1+torch"
    assert summary["validation_accuracy_drop"] == pytest.approx(14.6, abs=1e-6)
    assert summary["met_budget"] is False and summary["chosen"] == closest
    assert "No candidate met the budget" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "best" / "model.txt").read_text() == closest


def test_ctrl_c_keeps_every_finished_trial(teacher, space_file, tmp_path):
    summary, _ = run(teacher, space_file, tmp_path / "out", FakeMeasure(TABLE, tmp_path, interrupt_after=3))
    assert summary["interrupted"] and summary["chosen"] == "teacher+int8"
    finished = [json.loads(l) for l in (tmp_path / "out" / "trials.jsonl").read_text().splitlines()]
    assert [t["name"] for t in finished] == ["teacher", "teacher+int8", "teacher+onnx"]
    assert (tmp_path / "out" / "best" / "model.txt").read_text() == "teacher+int8"


def test_the_time_budget_stops_new_trials(teacher, space_file, tmp_path, monkeypatch):
    import lean.optimize.strategy as strategy

    now = [0.0]
    monkeypatch.setattr(strategy.time, "monotonic", lambda: now[0])

    class Slow(FakeMeasure):
        def __call__(self, candidate, mode):
            now[0] += 40.0  # every measurement takes 40 s
            return super().__call__(candidate, mode)

    measure = Slow(TABLE, tmp_path)
    summary, lines = run(teacher, space_file, tmp_path / "out", measure, time_budget="1m30s")
    assert summary["stop_reason"] == "the time budget is spent"
    assert measure.full() == ["teacher", "teacher+int8", "teacher+onnx"]
    assert "0:50 left" in lines[1] and "0:10 left" in lines[2]


def test_durations():
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400 and parse_duration("90s") == 90
    assert parse_duration("45") == 2700 and parse_duration(None) is None
    for bad in ("soon", "0m", "-5m", ""):
        with pytest.raises(LeanError, match="time-budget"):
            parse_duration(bad)


@pytest.mark.parametrize("options, words", [
    ({}, "give one budget"),
    ({"max_drop": 1.0, "max_ppl_ratio": 1.1}, "give one budget"),
    ({"max_drop": -1.0}, "--max-drop must be"),
    ({"max_drop": float("nan")}, "--max-drop must be"),
    ({"max_drop": 100.0}, "--max-drop must be"),
    ({"max_ppl_ratio": 0.9}, "--max-ppl-ratio must be"),
    ({"max_ppl_ratio": float("inf")}, "--max-ppl-ratio must be"),
    ({"max_ppl_ratio": 1.1, "relative": True}, "--relative applies"),
])
def test_bad_budgets_are_refused(options, words):
    with pytest.raises(LeanError, match=words):
        Budget(**options)


@pytest.mark.parametrize("args, words", [
    (["--max-drop", "-1"], "--max-drop must be"),
    (["--max-drop", "nan"], "--max-drop must be"),
    ([], "give one budget"),
    (["--max-drop", "1", "--time-budget", "soon"], "--time-budget"),
    (["--max-drop", "1", "--objective", "speed"], "--objective must be"),
    (["--max-drop", "1", "--batch-size", "0"], "--batch-size"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, words, tmp_path, teacher):
    result = invoke("optimize", str(teacher), "-o", str(tmp_path / "out"), *args)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, words", [
    ("runtimes: {x: {stepz: []}}", "S' runtime 'x'; known keys"),
    ("runtimes: {x: {steps: [{quantise: {}}]}}", "unknown step 'quantise'"),
    ("runtimes: {x: {steps: [{export: {optimise: O2}}]}}", "has no option optimise"),
    ("runtimes: {x: {load: {attn: sdpa}}}", "unknown key 'attn'"),
    ("runtimez: {}", "unknown key 'runtimez'"),
    ("extends: tpu", "no built-in space"),
    ("extends: cpu\nprobe: {epoch: 1}", "has no option epoch"),
    ("students: {l2: {steps: [{distill: {student_layers: 2}}]}}", "has no runtimes"),
])
def test_unknown_space_entries_are_one_line_errors(text, words, tmp_path, teacher):
    path = tmp_path / "S"
    path.write_text(text)
    with pytest.raises(LeanError) as e:
        load_space(path)
    assert words in str(e.value) and "\n" not in str(e.value)
    result = invoke("optimize", str(teacher), "-o", str(tmp_path / "out"), "--max-drop", "1", "--space", str(path))
    assert result.returncode == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_space_extends_the_builtin_one_adding_and_removing_entries():
    space = parse_space({"extends": "cpu", "students": {"l1": None, "l5": {"steps": [{"distill": {"student_layers": 5}}]}},
                         "runtimes": {"bnb-fp4": None}}, "mine.yaml")
    assert "l1" not in space.students and "l5" in space.students and "bnb-fp4" not in space.runtimes
    assert "onnx-int8-static" in space.runtimes
    with pytest.raises(LeanError, match="space for --device cpu"):
        parse_space({"extends": "cpu"}, "x.yaml", device="cuda")


def test_a_classical_model_fitted_on_the_task_is_a_candidate_and_may_be_chosen(teacher, space_file, tmp_path):
    """tfidf-logreg is measured like any chain (no steps: fitted on the train split) and wins when it is the
    fastest within the budget; it is never tried for a language-modelling task."""
    space_file.write_text(SPACE.replace("costs: {distill: 100, export: 5, quantize: 2}",
                                        "costs: {distill: 100, export: 5, quantize: 2, tfidf-logreg: 3}")
                          + "classical:\n  tfidf-logreg: {description: the linear reference}\n")
    space = load_space(space_file)
    candidate = next(c for c in space.candidates() if c.name == "tfidf-logreg")
    assert (candidate.kind, candidate.steps, candidate.probe_steps, candidate.cost) == ("tfidf-logreg", [], None, 3.0)
    assert candidate.key() != next(c for c in space.candidates() if c.name == "teacher+onnx").key()
    measure = FakeMeasure({**TABLE, "tfidf-logreg": (0.898, 0.899, 1.0)}, tmp_path)
    summary, _ = run(teacher, space_file, tmp_path / "run", measure)
    assert summary["chosen"] == "tfidf-logreg" and summary["met_budget"] is True
    assert (tmp_path / "run" / "best" / "model.txt").read_text() == "tfidf-logreg"
    # over the budget, it is measured and set aside like any candidate
    measure = FakeMeasure({**TABLE, "tfidf-logreg": (0.70, 0.70, 1.0)}, tmp_path)
    summary, _ = run(teacher, space_file, tmp_path / "run2", measure)
    assert summary["chosen"] == "l2+onnx" and ("tfidf-logreg", "full") in measure.calls

    from lean.optimize.run import availability

    reason = availability("cpu", 4, lm=True)(candidate)
    assert "language modelling" in reason and availability("cpu", 4)(candidate) is None
    with pytest.raises(LeanError, match="unknown kind 'nope'"):
        parse_space({"extends": "cpu", "classical": {"x": {"kind": "nope"}}}, "bad.yaml")
    with pytest.raises(LeanError, match="cannot share a name"):
        parse_space({"extends": "cpu", "classical": {"l3": {"kind": "tfidf-logreg"}}}, "bad.yaml")
    assert "tfidf-logreg" in load_space(None, "cpu").classical


def test_the_committed_tweet_sentiment_space_keeps_every_builtin_chain_sized_down():
    tweets = load_space(Path(__file__).resolve().parents[1] / "benchmarks" / "spaces" / "tweet-sentiment.yaml")
    builtin = load_space(None)
    assert list(tweets.students) == list(builtin.students) and list(tweets.runtimes) == list(builtin.runtimes)
    for name, student in tweets.students.items():
        (step,) = student.steps
        assert step.name == "distill" and step.options["max_train_samples"] == 2000, name
    assert tweets.measure == {"max_eval_samples": 1000} and tweets.finetune["max_length"] == 64


def test_a_base_model_needs_a_task_and_is_fine_tuned_first(tmp_path, space_file):
    from lean.optimize.run import resolve_teacher

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    config = OptimizeConfig(model=str(plain), output=str(tmp_path / "o"), budget=Budget(max_drop=1))
    with pytest.raises(LeanError, match="pass --task"):
        resolve_teacher(config, load_space(space_file))
    config = OptimizeConfig(model=str(plain), output=str(tmp_path / "o"), budget=Budget(max_drop=1), task="bbc-news")
    base, teacher, task = resolve_teacher(config, load_space(None))
    assert base == str(plain) and teacher == [{"finetune": {"epochs": 1, "max_length": 128}}] and task["spec"] == "bbc-news"


def test_overwrite_replaces_only_an_optimize_run(teacher, space_file, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(LeanError, match="lean cannot prove it wrote it"):  # no marker (lean.outputs)
        run(teacher, space_file, other, FakeMeasure(TABLE, tmp_path), overwrite=True)
    assert (other / "keep.txt").is_file()
    run(teacher, space_file, tmp_path / "out", FakeMeasure(TABLE, tmp_path), max_trials=1)
    second = FakeMeasure(TABLE, tmp_path)
    run(teacher, space_file, tmp_path / "out", second, overwrite=True)
    assert "teacher" in second.full()  # measured afresh


def test_students_no_shallower_than_the_teacher_are_skipped(teacher, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.replace("l1: {steps: [{distill: {student_layers: 1}}]}",
                                  "l4: {steps: [{distill: {student_layers: 4}}]}"))
    measure = FakeMeasure({**TABLE, **{n.replace("l1", "l4"): v for n, v in TABLE.items() if n.startswith("l1")}}, tmp_path)
    run(teacher, path, tmp_path / "out", measure)
    trials = {t["name"]: t for t in json.loads((tmp_path / "out" / "trials.json").read_text())}
    assert {n for n, t in trials.items() if t["status"] == "skipped"} == {"l4+torch", "l4+int8", "l4+onnx"}
    assert "4-layer student of a 4-layer teacher" in trials["l4+onnx"]["reason"]
    assert not any(n.startswith("l4") for n, _ in measure.calls)


def test_cli_builds_the_config_and_prints_the_verdict(monkeypatch, tmp_path, teacher):
    import lean.optimize.run as run_module

    seen = {}

    def fake(config, log=print):
        seen["config"] = config
        return {"chosen": "l2+onnx", "met_budget": True, "speedup": 2.5, "test_loss": 0.9}

    monkeypatch.setattr(run_module, "optimize", fake)
    result = invoke("optimize", str(teacher), "-o", str(tmp_path / "out"), "--max-drop", "0.5", "--relative",
                    "--device", "cpu", "--batch-size", "8", "--seq-length", "256", "--threads", "2",
                    "--objective", "throughput", "--time-budget", "1h", "--max-trials", "7")
    assert result.returncode == 0, result.stderr
    config = seen["config"]
    assert (config.budget.max_drop, config.budget.relative, config.objective, config.time_budget, config.max_trials) == \
        (0.5, True, "throughput", 3600, 7)
    assert (config.target.batch_size, config.target.seq_length, config.target.threads) == (8, 256, 2)
    assert "chosen: l2+onnx (speedup 2.5x over the teacher, on test -0.90 % against it)" in result.stdout


def test_overwrite_never_removes_the_input_model(space_file, tmp_path):
    run_dir = tmp_path / "out"
    teacher_inside = run_dir / "best"
    teacher_inside.mkdir(parents=True)
    (teacher_inside / "lean.json").write_text(json.dumps({"step": "finetune", "task": {"spec": "bbc-news"}}))
    (teacher_inside / "config.json").write_text("{}")
    (run_dir / "run.json").write_text("{}")
    with pytest.raises(LeanError, match="is the input model .* or one of its parents"):
        run(teacher_inside, space_file, run_dir, FakeMeasure(TABLE, tmp_path), overwrite=True)
    assert (teacher_inside / "config.json").is_file()


def test_budget_losses_in_points_percent_and_perplexity_ratio():
    teacher = {"accuracy": 0.80, "perplexity": 20.0}
    candidate = {"accuracy": 0.79, "perplexity": 21.0}
    assert Budget(max_drop=1).loss(teacher, candidate) == pytest.approx(1.0)  # points
    assert Budget(max_drop=1, relative=True).loss(teacher, candidate) == pytest.approx(1.25)  # percent of 0.80
    assert Budget(max_ppl_ratio=1.04).loss(teacher, candidate) == pytest.approx(1.05)
    assert Budget(max_ppl_ratio=1.04).loss(teacher, {"accuracy": 0.9}) is None  # no perplexity: not judged


def test_a_causal_lm_is_judged_by_its_perplexity_ratio(teacher, space_file, tmp_path):
    class Perplexity(FakeMeasure):
        def __call__(self, candidate, mode):
            figures = super().__call__(candidate, mode)
            if mode == "full":  # perplexity 10 / accuracy: the teacher 11.1, teacher+int8 11.17 (x1.006)...
                figures.validation = {"perplexity": 10 / figures.validation["accuracy"]}
                figures.test = {"perplexity": 10 / figures.test["accuracy"]}
            return figures

    summary, lines = run(teacher, space_file, tmp_path / "out", Perplexity(TABLE, tmp_path),
                         budget=Budget(max_ppl_ratio=1.01))
    assert summary["chosen"] == "l2+onnx" and summary["validation_loss"] == pytest.approx(0.9 / 0.892, abs=1e-4)
    assert summary["accuracy_drop"] is None and "perplexity x1.009" in " ".join(lines)

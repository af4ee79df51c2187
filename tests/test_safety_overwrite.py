"""--overwrite and the swap lose no data: one test per case of issue 27's "data loss" part.

lean replaces only a directory it can prove it wrote (lean.outputs: a marker with a random id that the
directory's own record repeats, nothing else in it), never an input of the run or a folder holding one,
and checks again at the moment of the swap. Each refusal is exit 2 with one line, and every file that
existed before is still there byte for byte (the tree is hashed before and after). Refusals come before
any work, so these run in seconds.

    python -m pytest tests/test_safety_overwrite.py -n 0 -q
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import bbc_rows, invoke, save_tiny_bert
from lean.errors import LeanError
from test_safety import assert_refused, tree_hashes


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A user's folder: a teacher lean made, a plain student model, a task file."""
    root = tmp_path_factory.mktemp("world")
    save_tiny_bert(root / "runs" / "teacher", num_layers=2, hidden=16, heads=2, task="bbc-news")
    shutil.copytree(root / "runs" / "teacher", root / "runs" / "student")
    with (root / "task.csv").open("w") as f:
        f.write("text,label\n" + "".join(f"\"{r['text'][:200]}\",{r['label']}\n" for r in bbc_rows(8)))
    return root


@pytest.fixture
def in_world(world, monkeypatch) -> Path:
    monkeypatch.chdir(world)
    before = tree_hashes(world)
    yield world
    assert tree_hashes(world) == before  # nothing lost, nothing changed


def users_folder(path: Path, *names: str) -> Path:
    """A folder of the user's: the given (lean-like) file names, plus files and a subfolder of their own."""
    path.mkdir(parents=True)
    for name in names:
        (path / name).write_text("{}\n")
    (path / "thesis.tex").write_text("years of work")
    (path / "figures").mkdir()
    (path / "figures" / "plot.pdf").write_bytes(b"%PDF")
    return path


def lean_output(path: Path, source: Path) -> Path:
    """A directory a lean step wrote (its marker, its lean.json carrying the same id)."""
    from lean.steps import run_step

    def step(source, config, out):
        (out / "weights.bin").write_bytes(b"w")

    return run_step("fake", str(source), {"k": 1}, path, fn=step)


def refused_keeping(folder: Path, *args: str, needle: str) -> None:
    before = tree_hashes(folder)
    assert_refused(invoke(*args), needle)
    assert tree_hashes(folder) == before and (folder / "thesis.tex").is_file()


# ---- optimize: a folder holding run.json is not lean's; a task file inside -o is an input ----

def test_optimize_overwrite_refuses_a_folder_with_run_json(in_world, tmp_path):
    folder = users_folder(tmp_path / "results", "run.json")
    refused_keeping(folder, "optimize", "runs/teacher", "-o", str(folder), "--overwrite", "--max-drop", "1",
                    "--device", "cpu", needle="lean cannot prove it wrote it")


def test_optimize_overwrite_never_removes_its_task_file(in_world, tmp_path):
    folder = users_folder(tmp_path / "opt", "run.json")
    shutil.copy(in_world / "task.csv", folder / "task.csv")
    refused_keeping(folder, "optimize", "runs/teacher", "-o", str(folder), "--overwrite", "--task",
                    str(folder / "task.csv"), "--max-drop", "1", "--device", "cpu", needle="is the input")


def test_optimize_resume_needs_a_run_lean_wrote(in_world, tmp_path):
    folder = users_folder(tmp_path / "opt", "run.json")
    refused_keeping(folder, "optimize", "runs/teacher", "-o", str(folder), "--resume", "--max-drop", "1",
                    "--device", "cpu", needle="--resume continues a `lean optimize` run lean wrote")


# ---- the swap checks again: a folder that appeared or changed while the step ran ------------

def test_a_folder_that_appears_during_the_step_is_kept(world, tmp_path):
    from lean.steps import run_step

    out = tmp_path / "out"

    def step(source, config, tmp):
        (tmp / "weights.bin").write_bytes(b"w")
        users_folder(out)  # someone creates the folder while lean works

    with pytest.raises(LeanError, match="appeared while lean ran\\); nothing was replaced") as caught:
        run_step("fake", str(world / "runs" / "teacher"), {"k": 1}, out, fn=step)
    assert tree_hashes(out) == tree_hashes(users_folder(tmp_path / "twin"))  # the folder as it was made
    kept = Path(str(caught.value).split("the new result is in '")[1].rstrip("'"))
    assert (kept / "weights.bin").read_bytes() == b"w" and (kept / "lean.json").is_file()


def test_overwrite_refuses_at_the_swap_a_file_added_during_the_step(world, tmp_path):
    from lean.steps import run_step

    out = lean_output(tmp_path / "out", world / "runs" / "teacher")

    def step(source, config, tmp):
        (out / "notes.txt").write_text("mine")  # the user saves a file into the old output meanwhile

    with pytest.raises(LeanError, match="'notes.txt', which lean did not write"):
        run_step("fake", str(world / "runs" / "teacher"), {"k": 2}, out, overwrite=True, fn=step)
    assert (out / "notes.txt").read_text() == "mine" and (out / "weights.bin").is_file()


# ---- a --task file inside -o is an input, never removed (finetune, quantize) -----------------

@pytest.mark.parametrize("verb", [["finetune", "runs/teacher"], ["quantize", "runs/teacher", "-m", "dynamic-int8"]])
def test_a_task_file_inside_the_output_is_never_removed(in_world, tmp_path, verb):
    out = lean_output(tmp_path / "out", in_world / "runs" / "teacher")
    shutil.copy(in_world / "task.csv", out / "task.csv")
    before = tree_hashes(out)
    assert_refused(invoke(*verb, "--task", str(out / "task.csv"), "-o", str(out), "--overwrite"), "is the input")
    assert tree_hashes(out) == before


# ---- lean's file names prove nothing: results.json + report.md, lean.json ------------------

@pytest.mark.parametrize("names", [("results.json", "report.md"), ("lean.json",)])
def test_lean_file_names_do_not_make_a_folder_leans(in_world, tmp_path, names):
    folder = users_folder(tmp_path / "analysis", *names)
    refused_keeping(folder, "finetune", "runs/teacher", "--task", "task.csv", "-o", str(folder), "--overwrite",
                    needle="lean cannot prove it wrote it")
    refused_keeping(folder, "bench", "runs/teacher", "-o", str(folder), "--overwrite",
                    needle="lean cannot prove it wrote it")


def test_a_marker_whose_record_disagrees_is_refused(in_world, tmp_path):
    out = lean_output(tmp_path / "out", in_world / "runs" / "teacher")
    manifest = json.loads((out / "lean.json").read_text())
    (out / "lean.json").write_text(json.dumps({**manifest, "output_id": "0" * 32}))
    before = tree_hashes(out)
    assert_refused(invoke("finetune", "runs/teacher", "--task", "task.csv", "-o", str(out), "--overwrite"),
                   "does not carry the id")
    assert tree_hashes(out) == before


# ---- inputs: distill's --student, bench's model directories --------------------------------

def test_distill_never_replaces_its_student(in_world):
    assert_refused(invoke("distill", "--teacher", "runs/teacher", "--student", "runs/student", "--task", "task.csv",
                          "-o", "runs/student", "--overwrite"), "is the input 'runs/student'")


@pytest.mark.parametrize("output", ["runs/teacher", "runs"])
def test_bench_never_writes_into_its_input_model(in_world, output):
    assert_refused(invoke("bench", "runs/teacher", "-o", output), "is the input")
    assert_refused(invoke("bench", "runs/teacher", "-o", output, "--overwrite"), "is the input")


# ---- -o ~ never wipes home, wherever lean runs from ----------------------------------------

def test_output_home_with_a_stray_lean_json_is_refused(in_world, tmp_path, monkeypatch):
    home = users_folder(tmp_path / "home", "lean.json")
    monkeypatch.setenv("HOME", str(home))
    refused_keeping(home, "finetune", "runs/teacher", "--task", "task.csv", "-o", "~", "--overwrite",
                    needle="lean cannot prove it wrote it")


# ---- what lean wrote stays replaceable ------------------------------------------------------

def test_overwrite_replaces_what_lean_wrote_and_its_temporary_files_only(world, tmp_path):
    from lean.outputs import mark, why_not_replaceable

    out = lean_output(tmp_path / "out", world / "runs" / "teacher")
    assert why_not_replaceable(out) is None
    run = tmp_path / "bench-run"  # written in place: lean's own temporary file beside an entry is allowed
    run.mkdir()
    output_id = mark(run, ["results.json", "logs/"], record="results.json")
    (run / "results.json").write_text(json.dumps({"output_id": output_id}))
    (run / "logs").mkdir()
    (run / "logs" / "fp32.log").write_text("log")
    (run / ".results.json.tmp").write_text("{")
    assert why_not_replaceable(run) is None
    (run / "mine.txt").write_text("x")
    assert "'mine.txt', which lean did not write" in why_not_replaceable(run)


def test_a_copy_of_a_lean_directory_keeps_its_id_and_its_lean_json(world, tmp_path):
    from lean.outputs import read_marker
    from lean.steps import atomic_dir

    source = lean_output(tmp_path / "model", world / "runs" / "teacher")
    with atomic_dir(tmp_path / "best", overwrite=True, record=None) as tmp:  # as lean optimize's best/
        shutil.rmtree(tmp)
        shutil.copytree(source, tmp)
    best = tmp_path / "best"
    assert (best / "lean.json").read_bytes() == (source / "lean.json").read_bytes()
    assert read_marker(best)["id"] == read_marker(source)["id"]
    plain = tmp_path / "plain"  # a model lean did not write: copied as it is, marked, its lean.json untouched
    users_folder(plain, "lean.json")
    with atomic_dir(tmp_path / "best", overwrite=True, record=None) as tmp:
        shutil.rmtree(tmp)
        shutil.copytree(plain, tmp)
    assert (best / "lean.json").read_text() == "{}\n" and (best / "thesis.tex").is_file()
    assert read_marker(best)["record"] is None


def test_bench_overwrite_replaces_an_earlier_run_and_nothing_else(tmp_path):
    from types import SimpleNamespace

    from lean.bench.runner import BenchOptions, BenchRun

    def claim(output: Path, overwrite: bool) -> dict:
        run = object.__new__(BenchRun)  # only the output handling: no suite is loaded or measured
        run.output, run.options, run.results = output, BenchOptions(output=output, overwrite=overwrite), {}
        run.suite = SimpleNamespace(file=None, task="bbc-news", base="minilm-l6", teacher=[], variants={})
        run._claim_output()
        return run.results

    first = claim(tmp_path / "run", overwrite=False)
    (tmp_path / "run" / "results.json").write_text(json.dumps(first))
    (tmp_path / "run" / "logs").mkdir()
    (tmp_path / "run" / "logs" / "fp32.log").write_text("log")
    with pytest.raises(LeanError, match="exists and is not empty"):
        claim(tmp_path / "run", overwrite=False)
    second = claim(tmp_path / "run", overwrite=True)
    assert second["output_id"] != first["output_id"] and not (tmp_path / "run" / "logs").exists()
    (tmp_path / "run" / "results.json").write_text(json.dumps(second))
    (tmp_path / "run" / "mine.txt").write_text("x")
    before = tree_hashes(tmp_path / "run")
    with pytest.raises(LeanError, match="'mine.txt', which lean did not write"):
        claim(tmp_path / "run", overwrite=True)
    assert tree_hashes(tmp_path / "run") == before

"""Nothing lost, nothing run: one test per item of issue 18 that the steps and the CLI own.

Every refusal is exit 2 with one line on stderr and no traceback; for the items that could destroy
data (1, 2, 4) every file that existed before still exists byte for byte. Refusals happen before
any work, so these run in seconds.

    python -m pytest tests/test_safety.py -x -q
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import invoke, save_tiny_bert


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256): equal before and after means nothing was lost."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def assert_refused(res, *needles: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A user's folder: their own files, a runs/ folder with a teacher and a sibling model, a task file."""
    from conftest import bbc_rows

    root = tmp_path_factory.mktemp("world")
    (root / "notes.txt").write_text("my notes\n")
    (root / "data").mkdir()
    (root / "data" / "keep.csv").write_text("a,b\n1,2\n")
    runs = root / "runs"
    save_tiny_bert(runs / "teacher", num_layers=2, hidden=16, heads=2, task="bbc-news")
    (runs / "sibling").mkdir()
    (runs / "sibling" / "lean.json").write_text('{"step": "quantize"}\n')
    with (root / "task.csv").open("w") as f:
        f.write("text,label\n" + "".join(f"\"{r['text'][:200]}\",{r['label']}\n" for r in bbc_rows(6)))
    return root


@pytest.fixture
def in_world(world, monkeypatch) -> Path:
    monkeypatch.chdir(world)
    before = tree_hashes(world)
    yield world
    assert tree_hashes(world) == before  # nothing lost, nothing changed


# ---- 1. --overwrite replaces only what lean wrote -------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["finetune", "runs/teacher", "--task", "task.csv", "-o", "."], "working directory"),
    (["finetune", "runs/teacher", "--task", "task.csv", "-o", ".."], "working directory"),
    (["finetune", "runs/teacher", "--task", "task.csv", "-o", "data"], "replaces only a directory lean wrote"),
    (["distill", "--teacher", "runs/teacher", "--student-layers", "1", "-o", "runs"], "input model"),
    (["quantize", "runs/teacher", "-m", "dynamic-int8", "-o", "runs"], "input model"),
    (["export", "runs/teacher", "-o", "runs/teacher"], "input model"),
    (["finetune", "runs/teacher", "--task", "task.csv", "-o", "notes.txt/model"], "which is a file"),
    (["finetune", "runs/teacher", "--task", "task.csv", "-o", "notes.txt"], "is a file"),
])
def test_1_overwrite_refuses_what_lean_did_not_write(in_world, args, needle):
    assert_refused(invoke(*args, "--overwrite"), needle)


def test_1_symlinked_output_is_resolved_before_the_checks(in_world):
    link = in_world / "link-to-data"
    link.symlink_to(in_world / "data")
    try:
        assert_refused(invoke("finetune", "runs/teacher", "--task", "task.csv", "-o", str(link), "--overwrite"),
                       "replaces only a directory lean wrote")
    finally:
        link.unlink()


def test_1_overwrite_replaces_a_lean_directory_with_normal_permissions(tmp_path, world):
    from lean.outputs import MARKER, why_not_replaceable
    from lean.steps import check_output_dir, run_step

    def earlier(source, config, out):
        (out / "stale.bin").write_text("x")

    def step(source, config, out):
        (out / "weights.txt").write_text("new")
        return {"task": {"name": "t"}}

    old = run_step("fake", str(world / "runs" / "teacher"), {"k": 0}, tmp_path / "old-model", fn=earlier)
    named_like_a_run = tmp_path / "run"  # lean's file names prove nothing (lean.outputs)
    named_like_a_run.mkdir()
    for name in ("results.json", "report.md"):
        (named_like_a_run / name).write_text("{}")
    assert why_not_replaceable(old) is None and why_not_replaceable(named_like_a_run) is not None
    assert why_not_replaceable(world / "data") is not None
    link = tmp_path / "link"
    link.symlink_to(old)
    assert check_output_dir(link, overwrite=True) == old.resolve()

    out = run_step("fake", str(world / "runs" / "teacher"), {"k": 1}, link, overwrite=True, fn=step)
    assert out == old.resolve() and sorted(p.name for p in old.iterdir()) == [MARKER, "lean.json", "weights.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert (old.stat().st_mode & 0o777) == (0o777 & ~mask)  # not mkdtemp's 0700
    assert not list(tmp_path.glob(".*lean-lock")) and not list(tmp_path.glob(".*.tmp-*"))


# ---- 2. the checkpoint directory is lean's own ----------------------------------------------

@pytest.mark.parametrize("ckpt, needle", [
    ("data", "holds files lean did not write"),
    (".", "working directory"),
    ("runs", "input model"),
    ("notes.txt/ckpt", "which is a file"),
    ("student/ckpt", "overlaps the output"),
])
def test_2_checkpoint_dir_must_be_leans_own(in_world, ckpt, needle):
    res = invoke("distill", "--teacher", "runs/teacher", "--task", "task.csv", "--student-layers", "1",
                 "--checkpoint-dir", ckpt, "-o", "student")
    assert_refused(res, needle)
    assert not (in_world / "student").exists()


def test_2_checkpoints_are_removed_only_with_the_marker(tmp_path):
    from lean.distill import CHECKPOINT_MARKER, DistillConfig, remove_checkpoints, write_fingerprint

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    remove_checkpoints(foreign)
    assert (foreign / "thesis.tex").read_text() == "years of work"
    ours = tmp_path / "ours"
    write_fingerprint(ours, DistillConfig(student_layers=1), None)
    assert (ours / CHECKPOINT_MARKER).is_file()
    remove_checkpoints(ours)
    assert not ours.exists()


# ---- 3. remote code only from the command-line flag -----------------------------------------

def test_3_a_manifest_cannot_turn_on_remote_code(tmp_path, world, monkeypatch):
    """A model directory that ships Python and a lean.json asking for remote code: nothing of it runs."""
    import json

    evil = tmp_path / "evil"
    shutil.copytree(world / "runs" / "teacher", evil)
    sentinel = tmp_path / "code-ran"
    (evil / "configuration_evil.py").write_text(
        f"open({str(sentinel)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n\nclass EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    config = json.loads((evil / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                               "AutoModelForSequenceClassification": "configuration_evil.EvilConfig"})
    (evil / "config.json").write_text(json.dumps(config))
    manifest = json.loads((evil / "lean.json").read_text())
    manifest.update(config={"trust_remote_code": True}, trust_remote_code=True,
                    parent={"path": str(evil), "config": {"trust_remote_code": True}})
    (evil / "lean.json").write_text(json.dumps(manifest))
    monkeypatch.chdir(tmp_path)
    for args in (["finetune", str(evil), "--task", str(world / "task.csv"), "-o", "a"],
                 ["distill", "--teacher", str(evil), "--student-layers", "1", "-o", "b"]):
        assert_refused(invoke(*args), "--trust-remote-code")
    assert not sentinel.exists()


# ---- 4. a second run on the same output or checkpoint dir fails at once ---------------------

def _hold_lock(target: Path, what: str) -> subprocess.Popen:
    """Another process holding lean's lock on `target` (as a concurrent run would), until its stdin closes."""
    code = ("import sys; from lean.locks import output_lock\n"
            f"with output_lock({str(target)!r}, {what!r}):\n    print('held', flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("what", ["output", "checkpoint directory"])
def test_4_a_concurrent_run_fails_at_once(in_world, what):
    target = in_world / ("student" if what == "output" else "ckpt")
    holder = _hold_lock(target, what)
    try:
        res = invoke("distill", "--teacher", "runs/teacher", "--task", "task.csv", "--student-layers", "1",
                     "--checkpoint-dir", "ckpt", "-o", "student")
    finally:
        holder.communicate("")
    assert_refused(res, "in use by another lean run")
    assert not (in_world / "student").exists() and not (in_world / "ckpt").exists()


# ---- 5-7. numbers refused before any work (the property test covers every option) ------------

@pytest.mark.parametrize("args, needle", [
    (["finetune", "runs/teacher", "--task", "task.csv", "--lr", "inf", "-o", "x"], "--lr must be a finite number"),
    (["finetune", "runs/teacher", "--task", "task.csv", "--epochs", "nan", "-o", "x"], "--epochs"),
    (["distill", "--teacher", "runs/teacher", "--student-layers", "1", "--temperature", "inf", "-o", "x"], "--temperature"),
    (["finetune", "runs/teacher", "--task", "task.csv", "--max-train-samples", "-5", "-o", "x"], "--max-train-samples"),
    (["distill", "--teacher", "runs/teacher", "--student-layers", "1", "--max-eval-samples", "-3", "-o", "x"], "--max-eval-samples"),
    (["finetune", "runs/teacher", "--task", "task.csv", "--max-eval-samples", "0", "-o", "x"], "--max-eval-samples"),
    (["predict", "runs/teacher", "hello", "--batch-size", "-1"], "--batch-size"),
    (["predict", "runs/teacher", "hello", "--max-length", "0"], "--max-length"),
])
def test_5_6_7_numbers_are_checked_up_front(in_world, args, needle):
    assert_refused(invoke(*args), needle)
    assert not (in_world / "x").exists()


def test_5_a_diverged_run_writes_nothing(tmp_path, world):
    """A temperature so small the soft targets overflow: the student goes NaN and is not saved as a result."""
    out = tmp_path / "student"
    res = invoke("distill", "--teacher", str(world / "runs" / "teacher"), "--task", str(world / "task.csv"),
                 "--student-layers", "1", "--temperature", "1e-45", "--epochs", "1", "--max-length", "16",
                 "--batch-size", "8", "-o", str(out), "--device", "cpu")
    if res.returncode == 0:  # if the run stays finite, its weights must be finite too
        from safetensors.torch import load_file

        assert all(t.isfinite().all() for t in load_file(out / "model.safetensors").values())
    else:  # the progress bar precedes it on stderr: the error is the last line, with no traceback
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert res.stderr.strip().splitlines()[-1].startswith("error: training diverged"), res.stderr
        assert not out.exists() and not Path(f"{out}.checkpoints").exists()


# ---- 9. damaged files are one line naming the file -------------------------------------------

@pytest.mark.parametrize("file, content, needle", [
    ("lean.json", '{"task": {"spec": "bbc', "lean.json is not valid JSON"),
    ("lean.json", "[]", "lean.json holds a JSON list"),
    ("lean.json", '{"task": {"spec": 5}}', 'task "spec" must be a string'),
    ("lean.json", '{"task": "bbc-news"}', '"task" must be a JSON object'),
    ("config.json", "[1, 2]", "config.json holds a JSON list"),
    ("config.json", '{"model_type": "be', "config.json is not valid JSON"),
    ("model.safetensors", "", "model.safetensors is not a complete safetensors file"),
    ("model.safetensors", "truncate", "model.safetensors is not a complete safetensors file"),
])
def test_9_damaged_model_directory(tmp_path, world, file, content, needle):
    model = tmp_path / "model"
    shutil.copytree(world / "runs" / "teacher", model)
    if content == "truncate":
        data = (model / file).read_bytes()
        (model / file).write_bytes(data[: len(data) // 2])
    else:
        (model / file).write_text(content)
    res = invoke("distill", "--teacher", str(model), "--task", str(world / "task.csv"), "--student-layers", "1",
                 "-o", str(tmp_path / "out"))
    assert_refused(res, needle)
    assert not (tmp_path / "out").exists()


def test_9_predict_inputs(tmp_path, world, monkeypatch):
    deep = tmp_path / "deep.jsonl"
    deep.write_text("{\"a\": " * 100_000 + "1" + "}" * 100_000 + "\n")
    assert_refused(invoke("predict", str(tmp_path), "--file", str(deep)), "nested too deeply")
    assert_refused(invoke("predict", str(tmp_path), "--file", str(tmp_path)), "is a directory")
    assert_refused(invoke("predict", str(tmp_path), "--batch-size", "0", "x"), "--batch-size")

    class FakeLM:  # the CLI's own check, without exporting a model
        kind = "lm"

        def generate(self, *a, **k):
            raise AssertionError("an empty prompt reached the model")

    import importlib

    monkeypatch.setattr(importlib.import_module("lean.runtime"), "load", lambda *a, **k: FakeLM())
    assert_refused(invoke("predict", str(tmp_path), "a prompt", ""), "prompt 2 is empty")


def test_9_predict_non_utf8_stdin_and_argv(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for argv, stdin in (([], b"caf\xe9\n"), ([b"caf\xe9"], b"")):
        res = subprocess.run([sys.executable.encode(), b"-m", b"lean.cli", b"predict", str(tmp_path).encode(), *argv],
                             input=stdin, capture_output=True, env=env)
        res.stdout, res.stderr = res.stdout.decode(), res.stderr.decode()
        assert_refused(res, "not UTF-8")


def test_9_student_config_and_seed(in_world):
    base = ["distill", "--teacher", "runs/teacher", "-o", "x"]
    assert_refused(invoke(*base, "--student-config", "num_hidden_layers=abc"), "num_hidden_layers must be a whole number")
    assert_refused(invoke(*base, "--student-layers", "1", "--seed", "-1"), "--seed")


# ---- 10. smaller: missing paths, usage errors, Ctrl-C ------------------------------------------

def test_10_missing_local_model_is_no_such_directory(in_world):
    assert_refused(invoke("finetune", "runs/no-such-model", "--task", "task.csv", "-o", "x"), "no such directory")
    assert_refused(invoke("distill", "--teacher", "./gone", "--student-layers", "1", "-o", "x"), "no such directory")


def test_10_usage_error_is_one_line(in_world):
    assert_refused(invoke("finetune", "runs/teacher", "--epochs", "abc", "-o", "x"), "--epochs")
    assert_refused(invoke("finetune", "runs/teacher", "--epoch", "1", "-o", "x"), "No such option")
    assert_refused(invoke("finetune", "runs/teacher"), "--output")


def test_10_ctrl_c_says_interrupted(in_world, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    import importlib

    monkeypatch.setattr(importlib.import_module("lean.finetune"), "finetune", interrupted)
    res = invoke("finetune", "runs/teacher", "--task", "task.csv", "-o", "x")
    assert res.returncode == 130 and res.stderr.strip() == "interrupted" and "Traceback" not in res.stderr


def test_first_line_gives_the_reason_and_never_fails_on_a_blank_message():
    # every "cannot ...: <reason>" refusal takes its reason from here, inside an except block
    from lean.errors import first_line

    assert first_line(ValueError("\n  \nbad header\nTraceback line")) == "bad header"
    assert first_line(RuntimeError()) == "RuntimeError"
    assert first_line(OSError("   ")) == "OSError"
    assert first_line(ValueError("x" * 1000)) == "x" * 300
    assert first_line(ValueError("x" * 1000), limit=20) == "x" * 20

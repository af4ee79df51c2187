"""lean.runtime and `lean predict`: onnxruntime + tokenizers inference that never loads torch.

    python -m pytest tests/test_runtime.py -x -q            # ~1 min on 2 cores, with the fresh-venv install
    python -m pytest tests/test_runtime.py -x -q -m "not slow"
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import bbc_rows, run_cli

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def texts() -> list[str]:
    rows = bbc_rows(2)
    return [r["text"] for r in rows] + ["Short one.", "", "Rates rose."]


@pytest.fixture(scope="session")
def onnx_bert(tiny_bert_dir, tmp_path_factory) -> Path:
    """The tiny BERT exported by lean export (validated on 8 test texts)."""
    from lean.export import ExportConfig, export

    return export(str(tiny_bert_dir), ExportConfig(max_eval_samples=8), str(tmp_path_factory.mktemp("onnx") / "bert"))


@pytest.fixture(scope="session")
def onnx_llama(tiny_llama_dir, tmp_path_factory) -> Path:
    from export_models import HAS_OPTIMUM, NEEDS_OPTIMUM
    from lean.export import ExportConfig, export

    if not HAS_OPTIMUM:
        pytest.skip(NEEDS_OPTIMUM)

    return export(str(tiny_llama_dir), ExportConfig(max_eval_samples=4), str(tmp_path_factory.mktemp("onnx") / "llama"))


# ---- classifiers ----------------------------------------------------------------------------------

def test_encode_matches_transformers_tokenizer(onnx_bert, tiny_bert_dir, texts):
    from transformers import AutoTokenizer

    from lean.runtime import load

    model = load(onnx_bert)
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    for length in (8, 32, 128):
        feed = model.encode(texts, max_length=length)
        ref = tok(texts, truncation=True, max_length=length, padding=True, return_tensors="np")
        assert set(feed) == {"input_ids", "attention_mask", "token_type_ids"}
        for name in feed:
            assert feed[name].dtype == np.int64
            np.testing.assert_array_equal(feed[name], ref[name])
    assert model.encode(texts[:2], max_length=32, pad_to=64)["input_ids"].shape == (2, 64)


def test_predict_matches_pytorch_in_any_batching(onnx_bert, tiny_bert_dir, texts):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lean.runtime import load

    model = load(onnx_bert, provider="CPUExecutionProvider", threads=1)
    assert model.kind == "classification" and model.label_names == ["business", "entertainment", "politics", "sport", "tech"]
    assert model.session.get_session_options().intra_op_num_threads == 1
    pt = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    with torch.inference_mode():
        ref = pt(**tok(texts, truncation=True, max_length=128, padding=True, return_tensors="pt")).logits.numpy()
    one = model.predict(texts, batch_size=1)
    many = model.predict(texts, batch_size=4)
    assert [p["label"] for p in one] == [p["label"] for p in many] == [model.label_names[i] for i in ref.argmax(-1)]
    np.testing.assert_allclose(model.logits(texts, batch_size=3), ref, atol=1e-5)
    for p in many:
        assert set(p) == {"label", "score", "scores"}
        assert abs(sum(p["scores"].values()) - 1) < 1e-5 and p["score"] == max(p["scores"].values())
    # a static shape (pad_to) gives the same logits as padding to the longest text
    feed = model.encode(texts[:3], pad_to=128)
    np.testing.assert_allclose(model.run(feed), ref[:3], atol=1e-5)


def test_runtime_and_predict_never_import_torch(onnx_bert):
    code = (
        "import sys, json\n"
        "from lean.runtime import load\n"
        f"m = load({str(onnx_bert)!r})\n"
        "out = m.predict(['Shares rose.', 'The match ended.'])\n"
        "from lean.cli import main\n"
        f"sys.argv = ['lean', 'predict', {str(onnx_bert)!r}, 'hello']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'optimum') if m in sys.modules]\n"
        "print(json.dumps({'heavy': heavy, 'n': len(out)}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"heavy": [], "n": 2}


# ---- causal LMs -----------------------------------------------------------------------------------

def test_generate_matches_pytorch_generate_with_kv_cache(onnx_llama, tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lean.runtime import load

    model = load(onnx_llama)
    assert model.kind == "lm" and any(n.startswith("past_key_values") for n in model.input_names)
    prompts = ["The government said", "Shares in the company", "A"]
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir, padding_side="left")
    tok.pad_token = tok.eos_token
    enc = tok(prompts, return_tensors="pt", padding=True, return_token_type_ids=False)
    pt = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    with torch.inference_mode():
        out = pt.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=tok.eos_token_id)
    ref = [tok.decode(row[enc["input_ids"].shape[1]:], skip_special_tokens=True) for row in out]
    stats = {}
    assert model.generate(prompts, max_new_tokens=10, batch_size=2, stats=stats) == ref
    assert stats["prefill_s"] > 0 and stats["decode_s"] > 0 and stats["steps"] >= 2
    with pytest.raises(Exception, match="causal LM"):
        model.predict(["x"])


def test_a_prompt_longer_than_the_context_keeps_its_last_tokens_with_a_warning(onnx_llama):
    from lean.runtime import OnnxModelError, load

    model = load(onnx_llama)
    long = " ".join(["The minister said the economy grew."] * 80)
    ids = model.tokenizer.encode(long).ids
    room = model.context_length - 6
    assert len(ids) > model.context_length
    with pytest.warns(UserWarning, match=rf"prompt 1 has {len(ids)} tokens; kept its last {room} "):
        got = model.generate_ids([long], max_new_tokens=6)
    keep = np.asarray([ids[-room:]], dtype=np.int64)
    assert got == model._greedy(keep, np.ones_like(keep), 6, None)
    with pytest.raises(OnnxModelError, match="leaves no room for a prompt"):
        model.generate_ids(["A"], max_new_tokens=model.context_length)

    result = run_cli("predict", str(onnx_llama), long, "--max-new-tokens", "6")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().startswith(f"warning: prompt 1 has {len(ids)} tokens; kept its last {room}")
    assert len(result.stdout.splitlines()) == 1


# ---- bad input ------------------------------------------------------------------------------------

def test_bad_directories_and_inputs_raise_clear_errors(onnx_bert, tmp_path):
    import shutil

    from lean.runtime import OnnxModelError, load

    with pytest.raises(OnnxModelError, match="no model.onnx"):
        load(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(onnx_bert, broken)
    data = (broken / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(data[: len(data) // 3])  # truncated, as by an interrupted copy
    with pytest.raises(OnnxModelError, match="not a valid ONNX model"):
        load(broken)
    model = load(onnx_bert)
    with pytest.raises(OnnxModelError, match="no input texts"):
        model.predict([])
    with pytest.raises(OnnxModelError, match="not available"):
        load(onnx_bert, provider="NoSuchExecutionProvider")


def test_cli_predict_reads_args_file_and_stdin(onnx_bert, tmp_path):
    result = run_cli("predict", str(onnx_bert), "Shares fell.", "The team won.", "--batch-size", "1")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 2 and all(r["label"] in r["scores"] for r in rows)

    file = tmp_path / "in.jsonl"
    file.write_text('{"text": "Shares fell."}\n\n{"text": "The team won.", "id": 3}\nplain text line\n')
    result = run_cli("predict", str(onnx_bert), "--file", str(file))
    assert result.returncode == 0, result.stderr
    from_file = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(from_file) == 3 and from_file[:2] == rows  # same texts, same answers, blank line skipped

    piped = subprocess.run([sys.executable, "-m", "lean.cli", "predict", str(onnx_bert)], input="Shares fell.\nThe team won.\n",
                           capture_output=True, text=True)
    assert piped.returncode == 0, piped.stderr
    assert [json.loads(line) for line in piped.stdout.splitlines()] == rows


def test_cli_predict_bad_input_exits_2_with_one_line(onnx_bert, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in onnx_bert.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.onnx").write_bytes(b"\x08\x07garbage" * 10)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    cases = [
        (("predict", str(broken), "hi"), "not a valid ONNX model"),
        (("predict", str(tmp_path), "hi"), "no model.onnx"),
        (("predict", str(onnx_bert), "--file", str(empty)), "no input texts"),
        (("predict", str(onnx_bert), "--file", str(tmp_path / "missing.txt")), "does not exist"),
    ]
    for args, message in cases:
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert result.stdout == ""
    empty_stdin = subprocess.run([sys.executable, "-m", "lean.cli", "predict", str(onnx_bert)], input="",
                                 capture_output=True, text=True)
    assert empty_stdin.returncode == 2 and "no input texts" in empty_stdin.stderr


# ---- a fresh environment without torch ----------------------------------------------------------------

def _wheel_from_installed(name: str, dest: Path) -> Path | None:
    """Re-pack an installed distribution into a wheel (its RECORD lists the files), so pip can install it offline."""
    import importlib.metadata as md

    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return None
    info = next(f for f in dist.files if f.parts[0].endswith(".dist-info"))
    base = Path(dist.locate_file(""))
    wheel_meta = (base / info.parts[0] / "WHEEL").read_text()
    tags = [line.split(":", 1)[1].strip().split("-") for line in wheel_meta.splitlines() if line.startswith("Tag:")]
    tag = "-".join([".".join(dict.fromkeys(t[0] for t in tags)), tags[0][1], tags[0][2]])  # py2-none-any + py3-none-any
    stem = info.parts[0][: -len(".dist-info")]
    path = dest / f"{stem}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for f in dist.files:
            if f.parts[0] == ".." or "__pycache__" in f.parts:
                continue  # console scripts are regenerated from entry_points.txt; bytecode is rebuilt
            source = base / f
            if source.is_file():
                z.write(source, str(f))
    return path


def _runtime_closure() -> list[str]:
    """Installed distributions that `pip install lean[runtime]` needs: the requirement closure, markers applied."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    todo = [Requirement(r) for r in ("numpy>=1.24", "typer>=0.12", "rich>=13", "pyyaml>=6", "onnxruntime-gpu>=1.18", "tokenizers>=0.19")]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        key = req.name.lower().replace("_", "-")
        if key in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(key)
        for dep in md.requires(req.name) or []:
            todo.append(Requirement(dep))
    return sorted(seen)


@pytest.mark.slow
def test_fresh_venv_without_torch_runs_lean_predict(onnx_bert, tmp_path_factory):
    """`pip install lean[runtime]` into a new venv (offline, from wheels of this environment), then `lean predict`."""
    import shutil

    tmp = tmp_path_factory.mktemp("venv")
    wheels = tmp / "wheels"
    wheels.mkdir()
    missing = [name for name in _runtime_closure() if _wheel_from_installed(name, wheels) is None]
    if missing:
        pytest.skip(f"runtime dependencies not installed here, so no offline wheels: {', '.join(missing)}")
    src = tmp / "src"  # build lean's wheel from a copy, so no build/ or egg-info lands in the checkout
    shutil.copytree(REPO / "lean", src / "lean", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "kernels", src / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", src / "pyproject.toml")
    readme = REPO / "README.md"
    (src / "README.md").write_text(readme.read_text() if readme.is_file() else "lean\n")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
                           capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"cannot build lean's wheel offline: {build.stderr.strip().splitlines()[-1:]}")
    venv = tmp / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(pip + ["--python", str(python), "install", "--no-compile", "--no-index", "--find-links", str(wheels),
                                    "lean[runtime]"], capture_output=True, text=True)
    if install.returncode != 0 and "No matching distribution" in install.stderr:
        pytest.skip(f"pip cannot reach the runtime packages offline: {install.stderr.strip().splitlines()[-1]}")
    assert install.returncode == 0, install.stderr

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    probe = subprocess.run([str(python), "-c", "import importlib.util as u; print([m for m in ('torch', 'transformers', 'optimum') if u.find_spec(m)])"],
                           capture_output=True, text=True, env=env, cwd=tmp)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr  # the runtime install pulls in no torch
    result = subprocess.run([str(venv / "bin" / "lean"), "predict", str(onnx_bert), "Shares fell.", "The team won."],
                            capture_output=True, text=True, env=env, cwd=tmp)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 2 and all(r["label"] in ("business", "entertainment", "politics", "sport", "tech") for r in rows)


def test_label_names_are_the_models_own_and_generic_only_where_it_has_none(onnx_bert, tmp_path):
    import shutil

    from lean.runtime import load

    config = json.loads((onnx_bert / "config.json").read_text())
    named = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    assert load(onnx_bert).predict(["Shares fell."])[0]["label"] in named
    bare = tmp_path / "bare"
    shutil.copytree(onnx_bert, bare)
    (bare / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k not in ("id2label", "label2id")}))
    row = load(bare).predict(["Shares fell."])[0]
    assert sorted(row["scores"]) == [f"LABEL_{i}" for i in range(len(named))]

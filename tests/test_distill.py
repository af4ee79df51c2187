"""Tests of lean distill: losses against references, student construction, end-to-end runs, bad input,
resume after a kill, and a 2-process torchrun run on the CPU (gloo).

    python -m pytest tests/test_distill.py -x -q
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli, save_tiny_bert

torch = pytest.importorskip("torch")


# ---- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine thread handoffs dominate."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sharp_teacher_dir(tmp_path_factory) -> Path:
    """A tiny BERT classifier whose head is scaled up, so its soft targets are far from uniform."""
    from transformers import AutoModelForSequenceClassification

    path = save_tiny_bert(tmp_path_factory.mktemp("models") / "sharp-bert", task="bbc-news")
    model = AutoModelForSequenceClassification.from_pretrained(path)
    with torch.no_grad():
        model.classifier.weight.mul_(150.0)  # logits of a few units, like a trained teacher's
    model.save_pretrained(path, safe_serialization=True)
    return path


def _manifest(path: Path) -> dict:
    return json.loads((Path(path) / "lean.json").read_text())


def _run(teacher, out, task, **values):
    from lean.steps import run_step, step_config

    values = {"epochs": 1, "max_length": 32, "batch_size": 8, "task": str(task), **values}
    return run_step("distill", str(teacher), step_config("distill", values), out)


def _cli_in_process(monkeypatch, capsys, *args):
    """Run `lean ARGS` through lean.cli.main in this process: (exit code, stderr)."""
    from lean import cli

    monkeypatch.setattr(sys, "argv", ["lean", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capsys.readouterr().err


# ---- losses ---------------------------------------------------------------------------------

def test_soft_target_kl_matches_hinton_reference():
    import torch.nn.functional as F

    from lean.distill_losses import soft_target_kl

    torch.manual_seed(0)
    s, t = torch.randn(6, 5) * 3, torch.randn(6, 5) * 3
    for temp in (1.0, 2.0, 4.0):
        reference = F.kl_div(F.log_softmax(s / temp, -1), F.softmax(t / temp, -1), reduction="batchmean") * temp ** 2
        assert torch.allclose(soft_target_kl(s, t, temp), reference, atol=1e-6)
    assert soft_target_kl(t, t, 2.0).abs() < 1e-6


def test_token_level_kl_ignores_padding():
    from lean.distill_losses import soft_target_kl

    torch.manual_seed(0)
    s, t = torch.randn(2, 7, 11), torch.randn(2, 7, 11)
    mask = torch.ones(2, 7)
    mask[1, 4:] = 0
    loss = soft_target_kl(s, t, 2.0, mask)
    s2 = s.clone()
    s2[1, 4:] = 100 * torch.randn(3, 11)  # padded positions change, the loss must not
    assert torch.allclose(loss, soft_target_kl(s2, t, 2.0, mask))
    rows = [soft_target_kl(s[b, :n].unsqueeze(0), t[b, :n].unsqueeze(0), 2.0, torch.ones(1, n)) * n for b, n in ((0, 7), (1, 4))]
    assert torch.allclose(loss, sum(rows) / 11, atol=1e-6)  # mean over the 11 real tokens


def test_hidden_state_mse_with_and_without_projection():
    from lean.distill_losses import hidden_state_mse

    torch.manual_seed(0)
    teacher = [torch.randn(2, 5, 8) for _ in range(3)]
    assert hidden_state_mse(teacher, teacher, [(0, 0), (2, 2)]) == 0
    student = [torch.randn(2, 5, 4) for _ in range(2)]
    projections = torch.nn.ModuleList(torch.nn.Linear(4, 8) for _ in range(2))
    loss = hidden_state_mse(student, teacher, [(0, 0), (1, 2)], projections)
    reference = (((projections[0](student[0]) - teacher[0]) ** 2).mean() + ((projections[1](student[1]) - teacher[2]) ** 2).mean()) / 2
    assert torch.allclose(loss, reference, atol=1e-6)
    loss.backward()
    assert projections[0].weight.grad is not None  # the projections learn


def test_attention_kl_reference_and_head_mismatch():
    from lean.distill_losses import attention_kl

    torch.manual_seed(0)
    t = [torch.softmax(torch.randn(2, 4, 6, 6), -1)]
    s = [torch.softmax(torch.randn(2, 4, 6, 6), -1)]
    assert attention_kl(t, t, [(0, 0)]).abs() < 1e-6
    reference = (t[0] * (t[0].log() - s[0].log())).sum(-1).mean()
    assert torch.allclose(attention_kl(s, t, [(0, 0)]), reference, atol=1e-5)
    s2 = [torch.softmax(torch.randn(2, 2, 6, 6), -1)]  # 2 student heads vs 4: heads averaged
    tm, sm = t[0].mean(1), s2[0].mean(1)
    assert torch.allclose(attention_kl(s2, t, [(0, 0)]), (tm * (tm.log() - sm.log())).sum(-1).mean(), atol=1e-5)


# ---- students -------------------------------------------------------------------------------

def test_default_layer_map():
    from lean.distill import default_layer_map

    assert default_layer_map(6, 3) == [1, 3, 5]
    assert default_layer_map(6, 2) == [2, 5]
    assert default_layer_map(4, 4) == [0, 1, 2, 3]


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_student_from_teacher_layers(arch, tiny_bert_dir, tiny_llama_dir, tiny_gpt2_dir):
    from lean.distill import layer_list, student_from_teacher_layers
    from lean.errors import LeanError
    from lean.models import load_model

    path, kind = {"bert": (tiny_bert_dir, "classification"), "llama": (tiny_llama_dir, "lm"), "gpt2": (tiny_gpt2_dir, "lm")}[arch]
    teacher = load_model(str(path), kind).eval()
    n = teacher.config.num_hidden_layers
    ids = torch.randint(5, 200, (2, 9))
    full = student_from_teacher_layers(teacher, list(range(n))).eval()
    with torch.no_grad():  # every layer kept: the student is the teacher
        assert torch.allclose(full(input_ids=ids).logits, teacher(input_ids=ids).logits, atol=1e-5)
    student = student_from_teacher_layers(teacher, [n - 1])
    assert student.config.num_hidden_layers == 1 and len(layer_list(student)[1]) == 1
    top_t, top_s = layer_list(teacher)[1][n - 1].state_dict(), layer_list(student)[1][0].state_dict()
    assert all(torch.equal(top_t[k], top_s[k]) for k in top_t)
    with pytest.raises(LeanError, match="out of range"):
        student_from_teacher_layers(teacher, [0, n])


def test_student_from_config(tiny_bert_dir, tiny_llama_dir):
    from lean.distill import student_from_config
    from lean.errors import LeanError
    from lean.models import load_model

    bert = load_model(str(tiny_bert_dir))
    small = student_from_config(bert, {"num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2})
    assert (small.config.num_hidden_layers, small.config.hidden_size, small.config.intermediate_size) == (2, 16, 32)
    with pytest.raises(LeanError, match="does not divide into 4 attention heads"):
        student_from_config(bert, {"hidden_size": 30})
    with pytest.raises(LeanError, match="no option"):
        student_from_config(bert, {"num_layers_typo": 2})
    llama = load_model(str(tiny_llama_dir), "lm")  # GQA: 4 heads, 2 key/value heads
    narrow = student_from_config(llama, {"hidden_size": 32, "num_attention_heads": 2})
    assert (narrow.config.head_dim, narrow.config.num_key_value_heads) == (16, 2)
    ids = torch.randint(5, 200, (1, 6))
    assert narrow(input_ids=ids).logits.shape == (1, 6, llama.config.vocab_size)


def test_config_checks_and_harness_variants():
    from lean.distill import DistillConfig
    from lean.errors import LeanError
    from lean.steps import step_config

    for values in ({"student_layers": 3}, {"student_layers": 2},
                   {"student_layers": 3, "hidden_weight": 1.0, "attention_weight": 1.0}):
        config = step_config("distill", values)
        assert isinstance(config, DistillConfig) and config.student_layers == values["student_layers"]
    assert step_config("distill", {"layer_map": "0,2,4"}).layer_map == [0, 2, 4]
    assert step_config("distill", {"student_config": ["hidden_size=16,num_attention_heads=2"]}).student_config == {
        "hidden_size": 16, "num_attention_heads": 2}
    for values, message in (({}, "choose a student"),
                            ({"student_layers": 3, "cache_teacher": True, "hidden_weight": 1.0}, "cache-teacher"),
                            ({"student_layers": 2, "layer_map": [0, 1, 2]}, "3 entries"),
                            ({"student_layers": 2, "alpha": 1.5}, "alpha"),
                            ({"student_layers": 2, "resume": True}, "checkpoint-dir"),
                            ({"student_layers": 2, "student": "x"}, "choose one student"),
                            ({"student_layers": 2, "bogus": 1}, "no option bogus")):
        with pytest.raises(LeanError, match=message):
            step_config("distill", values)


# ---- end-to-end -----------------------------------------------------------------------------

def test_distill_classification_with_all_losses(sharp_teacher_dir, bbc_csv, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification

    from lean.models import manifest_hash

    out = _run(sharp_teacher_dir, tmp_path / "s2", bbc_csv, student_layers=2, hidden_weight=1.0, attention_weight=1.0)
    m = _manifest(out)
    assert m["step"] == "distill" and m["parent"]["manifest_hash"] == manifest_hash(sharp_teacher_dir)
    assert m["teacher"]["manifest_hash"] == manifest_hash(sharp_teacher_dir)
    assert m["student"]["layer_map"] == [1, 3] and m["student"]["layers"] == 2
    assert set(m["losses"]["mean"]) == {"kd", "hard", "hidden", "attention"}
    assert all(v >= 0 for v in m["losses"]["mean"].values()) and m["losses"]["mean"]["kd"] > 1e-3
    test = m["metrics"]["test"]
    assert test["n"] == 20 and 0 <= test["accuracy"] <= 1 and set(m["metrics"]) == {"validation", "test"}
    assert m["teacher"]["metrics_source"] == "evaluated"  # the fixture's manifest holds no metrics
    assert m["retention"]["value"] == pytest.approx(test["accuracy"] / m["teacher"]["metrics"]["test"]["accuracy"], rel=1e-5)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.id2label[3] == "sport"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not any("lean_distill" in k for k in f.keys())
    assert not (out / "_checkpoints").exists()


def test_distilled_student_learns_the_teacher(sharp_teacher_dir, bbc_csv, tmp_path):
    """A random narrow student (projected hidden loss) trained on soft targets alone comes to agree with the teacher."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lean.data import load_task
    from lean.metrics import predict_logits

    out = _run(sharp_teacher_dir, tmp_path / "narrow", bbc_csv, epochs=8, lr=3e-3, alpha=1.0, hidden_weight=0.5, max_train_samples=48,
               student_config={"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2})
    m = _manifest(out)
    assert m["student"]["origin"]["kind"] == "config" and m["student"]["hidden_size"] == 16
    assert m["losses"]["last"]["loss_kd"] < 0.6 * m["losses"]["first"]["loss_kd"]
    task = load_task(str(bbc_csv))
    tok = AutoTokenizer.from_pretrained(out)
    texts = task.train.texts
    teacher = predict_logits(AutoModelForSequenceClassification.from_pretrained(sharp_teacher_dir).eval(), tok, texts, 32).argmax(-1)
    student = predict_logits(AutoModelForSequenceClassification.from_pretrained(out).eval(), tok, texts, 32).argmax(-1)
    assert (teacher == student).float().mean() > 0.6  # a random student agrees about 1/5 of the time


def test_cached_teacher_logits_train_the_same_student(sharp_teacher_dir, bbc_csv, tmp_path):
    from safetensors.torch import load_file

    runs = [_run(sharp_teacher_dir, tmp_path / f"c{cache}", bbc_csv, student_layers=2, cache_teacher=cache,
                 max_train_samples=32, alpha=0.9) for cache in (False, True)]
    live, cached = (_manifest(r)["losses"]["mean"] for r in runs)
    assert cached["kd"] == pytest.approx(live["kd"], rel=1e-3, abs=1e-5)
    a, b = (load_file(str(r / "model.safetensors")) for r in runs)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
    assert _manifest(runs[1])["losses"]["cached_teacher"] is True


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_distill_causal_lm(arch, tiny_llama_dir, tiny_gpt2_dir, bbc_csv, tmp_path):
    from transformers import AutoModelForCausalLM

    teacher = tiny_llama_dir if arch == "llama" else tiny_gpt2_dir
    out = _run(teacher, tmp_path / arch, bbc_csv, student_layers=1, hidden_weight=1.0, attention_weight=1.0,
               max_train_samples=24, max_eval_samples=8)
    m = _manifest(out)
    assert m["task"]["distill_kind"] == "lm" and m["retention"]["metric"] == "next_token_accuracy"
    assert set(m["metrics"]["test"]) >= {"loss", "perplexity", "next_token_accuracy", "tokens"}
    assert m["metrics"]["test"]["perplexity"] > 1 and m["teacher"]["metrics_source"] == "evaluated"
    assert set(m["losses"]["mean"]) == {"kd", "hard", "hidden", "attention"}
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 1


def test_lm_text_dataset_packs_every_token_of_the_corpus(tiny_llama_dir):
    # a causal student trains on the whole stream (texts joined by eos), not on each text's first block
    from lean.distill_losses import LMTextDataset
    from lean.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_llama_dir))
    texts = [" ".join(f"word{i}" for i in range(n)) for n in (50, 3, 120)]
    data = LMTextDataset(tokenizer, texts, max_length=16)
    eos = tokenizer.eos_token_id
    expected = [t for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for t in ids + [eos]]
    flat = [t for f in data.features for t in f["input_ids"]]
    assert flat == expected and len(expected) > 3 * 16
    assert all(len(f["input_ids"]) == 16 for f in data.features[:-1]) and 2 <= len(data.features[-1]["input_ids"]) <= 16
    assert all(f["attention_mask"] == [1] * len(f["input_ids"]) for f in data.features)


# ---- bad input: one line, exit 2, nothing written -------------------------------------------

def test_bad_input_is_one_line_exit_2_nothing_written(tiny_bert_dir, tiny_llama_dir, tiny_gpt2_dir, bbc_csv, tmp_path,
                                                       monkeypatch, capsys):
    from transformers import BertModel

    headless = tmp_path / "headless"
    BertModel.from_pretrained(tiny_bert_dir).save_pretrained(headless)
    cases = [
        (["--teacher", str(headless), "--student-layers", "2"], "has no sequence-classification head"),
        (["--teacher", str(tiny_bert_dir), "--layer-map", "0,7"], "out of range"),
        (["--teacher", str(tiny_bert_dir), "--student-config", "hidden_size=30,num_attention_heads=4"], "does not divide"),
        (["--teacher", str(tiny_bert_dir), "--student", str(tiny_llama_dir)], "different vocabulary"),
        (["--teacher", str(tiny_gpt2_dir), "--student-config", "vocab_size=100"], "share one vocabulary"),
        (["--teacher", str(tiny_llama_dir), "--student-layers", "1", "--cache-teacher"], "drop --cache-teacher"),
    ]
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        code, err = _cli_in_process(monkeypatch, capsys, "distill", *args, "--task", str(bbc_csv), "-o", str(out))
        assert code == 2, err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
        assert not out.exists() and not Path(f"{out}.checkpoints").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".out{i}.tmp")]


# ---- resume after a kill, and the config check on resume ------------------------------------

def test_resume_after_kill(tiny_bert_dir, bbc_csv, tmp_path, monkeypatch, capsys):
    out, ckpt = tmp_path / "student", tmp_path / "student.checkpoints"
    args = ["distill", "--teacher", str(tiny_bert_dir), "--task", str(bbc_csv), "--student-layers", "2", "-o", str(out),
            "--epochs", "4", "--batch-size", "8", "--max-length", "32", "--save-steps", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "lean.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (ckpt / "checkpoint-2" / "trainer_state.json").is_file():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()

    code, err = _cli_in_process(monkeypatch, capsys, *args)  # starting over on top of the checkpoints is refused
    assert code == 2 and "pass --resume" in err
    code, err = _cli_in_process(monkeypatch, capsys, *args, "--resume", "--lr", "1e-3")
    assert code == 2 and "different config (lr)" in err and not out.exists()

    done = run_cli(*args, "--resume", env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    m = _manifest(out)
    assert m["train"]["resumed_from_step"] >= 2 and m["train"]["steps"] == 36  # 69 examples / 8 -> 9 steps x 4 epochs
    assert m["config"]["resume"] is True and not ckpt.exists()


# ---- several processes ----------------------------------------------------------------------

def test_torchrun_two_processes_gloo(tiny_bert_dir, bbc_csv, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lean.cli",
           "distill", "--teacher", str(tiny_bert_dir), "--task", str(bbc_csv), "--student-layers", "2", "-o", str(out),
           "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--device", "cpu"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
        raise
    done = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    m = _manifest(out)
    assert m["train"]["processes"] == 2 and m["train"]["steps"] == 5  # 69 examples / (2 x 8) per step
    assert set(m["metrics"]) == {"validation", "test"} and {"accuracy", "macro_f1", "n"} <= set(m["metrics"]["test"])
    assert 0 < m["retention"]["value"]
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_hidden_layers == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # no stray temp dirs or checkpoints
    assert done.stdout.count("wrote ") == 1  # rank 0 reports once

"""No tracebacks left (issue 27, part 4): paths the filesystem refuses, damaged fields of every directory kind,
--student-config, --resume, --space, --triton-repository and predict's --max-length are each one line on
stderr and exit 2. A property test feeds every field lean reads from each directory kind (PyTorch, ONNX,
TF-IDF) wrong types, out-of-range values and missing keys: each is refused in one line or loads.

    python -m pytest tests/test_safety_fields.py -x -q
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_safety import assert_refused

from conftest import invoke

LONG = "n" * 300  # a name past the 255 bytes Linux filesystems allow


def save_tiny_onnx(path: Path, source: Path, labels: int = 5) -> Path:
    """An ONNX classifier directory as lean export lays it out, without exporting: logits from the token count."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path.mkdir(parents=True)
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
              for n in ("input_ids", "attention_mask")]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", labels])
    weights = [numpy_helper.from_array(np.linspace(-1, 1, labels, dtype=np.float32).reshape(1, labels), "w"),
               numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")]
    nodes = [helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["m", "axes"], ["s"], keepdims=1),
             helper.make_node("MatMul", ["s", "w"], ["logits"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny", inputs, [out], weights),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every onnxruntime lean supports reads
    onnx.save(model, str(path / "model.onnx"))
    shutil.copy(source / "config.json", path / "config.json")
    tiny_tokenizer().save(str(path / "tokenizer.json"))
    (path / "lean.json").write_text(json.dumps({"step": "export", "max_length": 128}))
    return path


def tiny_tokenizer():
    """A word-level tokenizer of a few words that loads in a millisecond (a BERT vocabulary takes 50 ms)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]", "[PAD]", *"shares rose after profits beat forecasts a text".split()]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tiny_bert_dir, bbc_csv) -> dict[str, Path]:
    """One pristine directory of each kind, and the task file."""
    from lean.bench.classical import TfidfLogregConfig, build_tfidf_logreg

    root = tmp_path_factory.mktemp("kinds")
    return {"torch": tiny_bert_dir, "onnx": save_tiny_onnx(root / "onnx", tiny_bert_dir),
            "tfidf": build_tfidf_logreg({"spec": str(bbc_csv), "split_seed": 42}, TfidfLogregConfig(max_features=300),
                                        root / "tfidf"),
            "task": bbc_csv}


def damaged(dirs, tmp_path, kind: str, file: str, change) -> Path:
    """A copy of the `kind` directory whose JSON `file` went through `change` (which may return a new value)."""
    copy = Path(shutil.copytree(dirs[kind], tmp_path / f"{kind}-copy"))
    value = json.loads((copy / file).read_text())
    value = change(value) or value
    (copy / file).write_text(json.dumps(value))
    return copy


# ---- paths the filesystem refuses --------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["finetune", "{model}", "--task", "{task}", "-o", LONG],
    ["finetune", LONG, "--task", "{task}", "-o", "x"],
    ["finetune", "{model}", "--task", LONG, "-o", "x"],
    ["serve", "{onnx}", "--triton-repository", LONG],
])
def test_names_longer_than_the_filesystem_allows(dirs, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    args = [a.format(model=dirs["torch"], task=dirs["task"], onnx=dirs["onnx"]) for a in args]
    assert_refused(invoke(*args), "longer than the filesystem allows")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args", [
    ["finetune", "~no-such-user-lean/m", "--task", "{task}", "-o", "x"],
    ["finetune", "{model}", "--task", "~no-such-user-lean/t.csv", "-o", "x"],
    ["finetune", "{model}", "--task", "{task}", "-o", "~no-such-user-lean/x"],
])
def test_home_of_an_unknown_user(dirs, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    args = [a.format(model=dirs["torch"], task=dirs["task"]) for a in args]
    assert_refused(invoke(*args), "no user 'no-such-user-lean'")


def test_triton_repository_on_an_existing_file(dirs, tmp_path):
    (tmp_path / "afile").write_text("mine")
    for target in ("afile", "afile/repo"):
        assert_refused(invoke("serve", str(dirs["onnx"]), "--triton-repository", str(tmp_path / target)),
                       "is a file where a directory is needed")
    assert (tmp_path / "afile").read_text() == "mine"


def test_space_that_is_a_binary_file(dirs, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_bytes(bytes(range(256)) * 4)
    assert_refused(invoke("optimize", str(dirs["torch"]), "--max-drop", "1", "--space", str(space),
                          "-o", str(tmp_path / "opt")), "is not UTF-8 text")


# ---- predict ---------------------------------------------------------------------------------

def test_predict_max_length_beyond_the_models_positions(dirs):
    res = invoke("predict", str(dirs["onnx"]), "a text", "--max-length", "512")
    assert res.returncode == 0, res.stderr
    assert_refused(invoke("predict", str(dirs["onnx"]), "a text", "--max-length", "100000"),
                   "--max-length 100000 is above the limit of 512 tokens")


# ---- --student-config and --resume -------------------------------------------------------------

@pytest.mark.parametrize("override, needle", [
    ("no_such_key=1", "has no option no_such_key"),
    ("hidden_act=5", "hidden_act must be a string"),
    ("hidden_act=no-such-activation", "builds no model"),
    ("hidden_dropout_prob=2", "builds no model"),
    ("type_vocab_size=-1", "\"type_vocab_size\" must be a whole number of at least 0"),
    ("max_position_embeddings=0", "must be a whole number of at least 1"),
    ("max_position_embeddings=8", "is below --max-length 16"),
    ("num_labels=1000000000000", "must share one vocabulary"),
    ("id2label=5", "must share one vocabulary"),
    ("pad_token_id=999999", "must share one vocabulary"),
    ("layer_norm_eps=abc", "\"layer_norm_eps\" must be a finite number"),
])
def test_student_config_keys_and_values(dirs, tmp_path, override, needle):
    out = tmp_path / "student"
    assert_refused(invoke("distill", "--teacher", str(dirs["torch"]), "--task", str(dirs["task"]), "--max-length", "16",
                          "--student-config", override, "-o", str(out)), needle)
    assert not out.exists()


@pytest.mark.parametrize("file, content, needle", [
    ("trainer_state.json", "{", "is damaged"),
    ("trainer_state.json", "[]", "is damaged"),
    ("trainer_state.json", '{"global_step": "x"}', "records no step"),
    ("optimizer.pt", "not a zip", "not a complete torch archive"),
    ("model.safetensors", "", "not a complete safetensors file"),
    ("lean-distill.json", "[1]", "is damaged"),
])
def test_damaged_resume_checkpoint(dirs, tmp_path, file, content, needle):
    from lean.distill_checkpoints import CHECKPOINT_MARKER

    ckpt = tmp_path / "student.checkpoints"
    (ckpt / "checkpoint-2").mkdir(parents=True)
    (ckpt / CHECKPOINT_MARKER).write_text("")
    (ckpt / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2}')
    target = ckpt / file if file == "lean-distill.json" else ckpt / "checkpoint-2" / file
    target.write_text(content)
    assert_refused(invoke("distill", "--teacher", str(dirs["torch"]), "--task", str(dirs["task"]), "--student-layers",
                          "1", "--resume", "-o", str(tmp_path / "student")), needle)
    assert not (tmp_path / "student").exists()


# ---- damaged fields, one by one ----------------------------------------------------------------

@pytest.mark.parametrize("kind, file, change, needle", [
    ("torch", "lean.json", lambda m: m.update(inherited=[1, 2]), '"inherited" must be a JSON object'),
    ("torch", "lean.json", lambda m: m.update(inherited={"split_seed": {"value": "x"}}), "inherited.split_seed.value"),
    ("torch", "lean.json", lambda m: m.update(metrics={"test": {"accuracy": "high"}}), "metrics.test.accuracy"),
    ("torch", "lean.json", lambda m: m.update(metrics=[0.9]), '"metrics" must be a JSON object'),
    ("torch", "lean.json", lambda m: m["task"].update(split_seed="abc"), "task.split_seed"),
    ("torch", "lean.json", lambda m: m["task"].update(split_seed=-1), "task.split_seed"),
    ("torch", "lean.json", lambda m: m.update(max_length=0), '"max_length" must be a whole number'),
    ("torch", "lean.json", lambda m: m.update(config={"max_length": "long"}), "config.max_length"),
    ("torch", "config.json", lambda c: c.update(hidden_size=0), '"hidden_size" must be a whole number of at least 1'),
    ("torch", "config.json", lambda c: c.update(num_hidden_layers="2"), '"num_hidden_layers" must be a whole number'),
    ("torch", "config.json", lambda c: c.update(layer_norm_eps="tiny"), '"layer_norm_eps" must be a finite number'),
    ("torch", "config.json", lambda c: c.update(id2label=["a", "b"]), '"id2label" must be an object'),
])
def test_damaged_model_directory_fields(dirs, tmp_path, kind, file, change, needle):
    model = damaged(dirs, tmp_path, kind, file, change)
    out = tmp_path / "out"
    assert_refused(invoke("distill", "--teacher", str(model), "--task", str(dirs["task"]), "--student-layers", "1",
                          "-o", str(out)), needle)
    assert not out.exists()


def test_weights_of_the_wrong_shapes(dirs, tmp_path):
    from conftest import save_tiny_bert

    model = Path(shutil.copytree(dirs["torch"], tmp_path / "model"))
    wider = save_tiny_bert(tmp_path / "wider", num_layers=4, hidden=64, heads=4)
    shutil.copy(wider / "model.safetensors", model / "model.safetensors")
    assert_refused(invoke("quantize", str(model), "-m", "dynamic-int8", "-o", str(tmp_path / "out")),
                   "its weights do not fit its config.json")


@pytest.mark.parametrize("kind, file, change, needle", [
    ("onnx", "config.json", lambda c: [c], "holds a JSON list, not an object"),
    ("onnx", "lean.json", lambda m: [m], "holds a JSON list, not an object"),
    ("onnx", "lean.json", lambda m: m.update(max_length="long"), '"max_length" must be a whole number'),
    ("onnx", "lean.json", lambda m: m.update(max_length=10**9), "above the limit of 512 tokens"),
    ("onnx", "config.json", lambda c: c.update(id2label=["a"]), '"id2label" must be an object'),
    ("onnx", "config.json", lambda c: c.update(max_position_embeddings="512"), '"max_position_embeddings" must be'),
    ("tfidf", "lean.json", lambda m: [m], "holds a JSON list, not an object"),
    ("tfidf", "vocabulary.json", lambda v: list(v), "holds a JSON list, not an object"),
    ("tfidf", "vocabulary.json", lambda v: v.update(extra=10**9), "not a column of the"),
    ("tfidf", "lean.json", lambda m: m.update(config={"ngram_max": "two"}), '"ngram_max" must be a whole number'),
    ("tfidf", "lean.json", lambda m: m.update(labels=["only-one"]), '"labels" must name each of the'),
])
def test_damaged_runtime_directory_fields(dirs, tmp_path, kind, file, change, needle):
    assert_refused(invoke("predict", str(damaged(dirs, tmp_path, kind, file, change)), "a text"), needle)


def test_damaged_tfidf_weights(dirs, tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    copy = Path(shutil.copytree(dirs["tfidf"], tmp_path / "tfidf"))
    save_file({"idf": np.ones(3), "coef": np.ones((2, 4)), "intercept": np.ones(2),
               "classes": np.arange(2, dtype=np.int64)}, str(copy / "weights.safetensors"))
    assert_refused(invoke("predict", str(copy), "a text"), "arrays of shapes that do not fit together")
    save_file({"idf": np.ones(3)}, str(copy / "weights.safetensors"))
    assert_refused(invoke("predict", str(copy), "a text"), "has no coef array")


# ---- the property test: every field of every directory kind, every kind of wrong ---------------

MISSING = object()
BAD_VALUES = [MISSING, None, "text", "", -1, 0, 10**12, 1.5, float("nan"), True, [], [1, "x"], {}, {"k": [1]}]
# loading a PyTorch model takes about 80 ms: its config fields get one value of each kind of wrong
FEW_BAD_VALUES = [MISSING, None, "text", -1, 0, 10**12, 1.5, []]


def _fields(value: dict, prefix: tuple = ()):
    """Every key path of a JSON object, nested objects included (id2label's entries, metrics.test.accuracy)."""
    for key, inner in value.items():
        yield (*prefix, key)
        if isinstance(inner, dict) and len(prefix) < 2:
            yield from _fields(inner, (*prefix, key))


def _set(value: dict, path: tuple, new) -> dict:
    import copy

    out = copy.deepcopy(value)
    target = out
    for key in path[:-1]:
        target = target[key]
    if new is MISSING:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = new
    return out


def _load_torch(path: Path, weights: bool = True) -> None:
    from lean.lineage import inherit
    from lean.models import load_config, load_model, read_manifest

    read_manifest(path)
    inherit(path, {})
    load_config(str(path))
    if weights:  # lean.json never reaches from_pretrained: the config is enough there
        load_model(str(path))


def _load_runtime(path: Path) -> None:
    from lean.runtime import load

    model = load(path, provider="CPUExecutionProvider", threads=1)
    model.predict(["Shares rose after profits beat forecasts"], batch_size=2)


# directory kind, file, extra keys lean reads that the pristine file may not hold
PROPERTY_CASES = [("torch", "config.json", ("num_labels", "n_positions", "n_embd")),
                  ("torch", "lean.json", ("max_length", "inherited", "metrics", "labels", "step")),
                  ("onnx", "config.json", ("n_positions", "num_labels")),
                  ("onnx", "lean.json", ("labels",)),
                  ("tfidf", "lean.json", ())]


@pytest.mark.parametrize("kind, file, extra", PROPERTY_CASES, ids=[f"{k}-{f}" for k, f, _ in PROPERTY_CASES])
def test_every_field_wrong_is_refused_in_one_line_or_loads(dirs, tmp_path, kind, file, extra):
    """Each field set to each wrong value (or removed): the directory loads (and predicts), or the loader
    raises lean's one-line error. Any other exception is a traceback the user would have seen."""
    from lean.errors import LeanError
    from lean.runtime import OnnxModelError

    copy = Path(shutil.copytree(dirs[kind], tmp_path / kind))
    pristine = json.loads((copy / file).read_text())
    if kind == "torch":
        def load(path):
            _load_torch(path, weights=file == "config.json")
    else:
        load = _load_runtime
    failures = []
    for field in [*_fields(pristine), *((key,) for key in extra if key not in pristine)]:
        for bad in FEW_BAD_VALUES if (kind, file) == ("torch", "config.json") else BAD_VALUES:
            (copy / file).write_text(json.dumps(_set(pristine, field, bad)))
            try:
                load(copy)
            except (LeanError, OnnxModelError) as e:
                if "\n" in str(e).strip():
                    failures.append(f"{'.'.join(map(str, field))}={bad!r}: a message of several lines")
            except Exception as e:  # noqa: BLE001 (the point: nothing else may escape)
                failures.append(f"{'.'.join(map(str, field))}={bad!r}: {type(e).__name__}: {str(e)[:120]}")
    assert not failures, f"{len(failures)} tracebacks, e.g.:\n" + "\n".join(failures[:15])


@pytest.mark.parametrize("line, needle", [
    ('{"kind": "candidate", "name": "x", "key": "k", "status": "ok", "latency_ms": "fast"}', '"latency_ms" must be a number'),
    ('{"kind": "candidate", "name": "x", "key": "k", "status": "ok", "passed": 1}', '"passed" must be true or false'),
    ('{"kind": "candidate", "name": "x", "key": "k", "status": "ok", "validation": [0.9]}', '"validation" must be a JSON object'),
    ('{"kind": "candidate", "name": "x", "status": "ok"}', '"key" must be a string'),
    ('{"kind": "candidate", "name": "x", "key": "k", "status": 5}', '"status" must be a string'),
])
def test_damaged_optimize_trials_for_resume(tmp_path, line, needle):
    """`lean optimize --resume` reads the run's trials.jsonl back: a damaged trial is one line, not a traceback later."""
    from lean.errors import LeanError
    from lean.optimize.trials import TrialStore

    (tmp_path / "trials.jsonl").write_text(line + "\n")
    with pytest.raises(LeanError, match=needle.replace("(", r"\(")):
        TrialStore(tmp_path / "trials.jsonl")
    (tmp_path / "trials.jsonl").write_bytes(b"\xff\xfe{}\n")
    with pytest.raises(LeanError, match="is not UTF-8 text"):
        TrialStore(tmp_path / "trials.jsonl")


@pytest.mark.parametrize("content", ["[1, 2]", "{", "\udcff"])
def test_damaged_optimize_run_settings_for_resume(dirs, tmp_path, content):
    from lean.optimize.run import RUN_ENTRIES, RUN_FILE
    from lean.outputs import mark

    out = tmp_path / "opt"
    out.mkdir()
    mark(out, RUN_ENTRIES, record=RUN_FILE)
    (out / RUN_FILE).write_bytes(content.encode("utf-8", "surrogateescape"))
    res = invoke("optimize", str(dirs["torch"]), "--max-drop", "1", "--resume", "-o", str(out))
    assert_refused(res)
    assert (out / RUN_FILE).read_bytes() == content.encode("utf-8", "surrogateescape")

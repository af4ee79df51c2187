"""Model specs: local directories, the built-in alias, Hub ids, safe loading, manifests."""

from __future__ import annotations

import pytest

from lean.errors import LeanError
from lean.models import builtin_model_path, load_model, manifest_hash, read_manifest, resolve_model


def test_builtin_alias_points_at_real_weights():
    path = builtin_model_path("minilm-l6")
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert resolve_model("minilm-l6") == str(path)


def test_builtin_model_loads_without_sentence_transformers():
    import subprocess
    import sys

    code = ("import sys; from lean.models import load_model; m = load_model('minilm-l6', 'base'); "
            "print(sum(p.numel() for p in m.parameters())); print('sentence_transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert 22_000_000 < int(out[0]) < 23_000_000
    assert out[1] == "False"


def test_local_dir_and_hub_id_branches(tiny_bert_dir):
    assert resolve_model(str(tiny_bert_dir)) == str(tiny_bert_dir)
    # a Hub id is passed through untouched for from_pretrained (never downloaded in tests)
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"


def test_missing_path_and_not_a_model(tmp_path):
    with pytest.raises(LeanError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(LeanError, match="not a model directory"):
        resolve_model(str(tmp_path))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(LeanError, match="is a file"):
        resolve_model(str(tmp_path / "f.txt"))


def test_pickled_weights_are_refused(tmp_path, tiny_bert_dir):
    import shutil

    import torch
    from safetensors.torch import load_file

    d = tmp_path / "pickled"
    shutil.copytree(tiny_bert_dir, d)
    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    with pytest.raises(LeanError, match="safetensors only"):
        load_model(str(d))


def test_manifest_roundtrip(tiny_bert_dir, tmp_path):
    assert read_manifest(tiny_bert_dir)["task"]["name"] == "bbc-news"
    assert read_manifest(tmp_path) == {}
    assert manifest_hash(tiny_bert_dir) is not None and manifest_hash(tmp_path) is None

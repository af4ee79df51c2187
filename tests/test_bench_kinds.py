"""Tests for lean.bench.kinds: a variant kind is one registration that the schema, the cache, the
subprocesses and `--list` all read."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lean.bench.backends import Backend
from lean.errors import LeanError


@dataclass
class ConstantConfig:
    label: int = 0


class ConstantBackend(Backend):
    preload = ("json",)


def test_a_registered_kind_is_known_everywhere_at_once(monkeypatch):
    from lean.bench import kinds
    from lean.bench.plan import list_lines, preload_kind
    from lean.bench.suite import parse_suite

    # registered for this test only (the registry is the one dict every module reads): the entries are
    # noted as absent first, so they are removed again when the test ends
    monkeypatch.setitem(kinds.KINDS, "constant", None)
    monkeypatch.setitem(kinds.BACKENDS, "constant", None)
    kind = kinds.register_kind(kinds.VariantKind("constant", "always the first label", backend=ConstantBackend,
                                                 fit=lambda task, config, out: out, config=ConstantConfig))
    assert kinds.KINDS["constant"] is kind and kinds.BACKENDS["constant"] is ConstantBackend
    assert not kind.takes_steps
    data = {"task": "bbc-news", "base": "minilm-l6", "teacher": [],
            "variants": {"c": {"kind": "constant"}, "m": {}}}
    suite = parse_suite(data)
    assert suite.variants["c"].kind == "constant" and preload_kind(suite.variants["c"]) == "constant"
    assert kinds.backend_name("constant", None) == "constant"
    assert any(line.startswith("c ") and "constant" in line for line in list_lines(suite, None, "cpu"))
    with pytest.raises(LeanError, match="takes no steps"):
        parse_suite({**data, "variants": {"c": {"kind": "constant", "steps": [{"export": {}}]}}})


def test_model_directories_pick_their_backend_by_what_they_hold(tmp_path, tiny_bert_dir):
    from lean.bench.kinds import KINDS, backend_name

    assert KINDS["model"].takes_steps and KINDS["tfidf-logreg"].fit is not None
    assert backend_name("model", tiny_bert_dir) == "torch"
    assert backend_name("tfidf-logreg", tmp_path) == "tfidf-logreg"


def test_the_registry_is_restored_after_a_test():
    from lean.bench.kinds import BACKENDS, KINDS

    assert "constant" not in KINDS and "constant" not in BACKENDS

"""Method and step configs: they check themselves, carry a version, and load back as saved.

    python -m pytest tests/test_quantize_configs.py -q
"""

from __future__ import annotations

from dataclasses import asdict

import pytest

from conftest import invoke


def _non_default_configs(Q):
    return [Q.BnbInt8Config(threshold=4.5, skip=["classifier", "bert.pooler"]),
            Q.BnbNF4Config(double_quant=False, compute_dtype="bfloat16", blocksize=128, skip=["classifier"]),
            Q.BnbFP4Config(blocksize=256),
            Q.DynamicInt8Config(per_channel=False, skip=["classifier", "bert.pooler.dense"])]


def test_every_method_config_round_trips_through_its_saved_form():
    import json

    import lean.quantize as Q

    for config in _non_default_configs(Q):
        saved = json.loads(json.dumps(asdict(config)))  # as a manifest or a saved directory holds it
        assert saved["version"] == Q.CONFIG_VERSION and saved["method"] == config.method
        assert Q.method_config_from_dict(saved) == config


def test_step_config_round_trips_through_the_manifest_form():
    import lean.quantize as Q
    from lean.errors import LeanError
    from lean.steps import config_dict, step_config

    config = Q.config_from_dict(method="bnb-nf4", blocksize=128, double_quant=False, task="bbc-news", split_seed=7,
                                calibration_samples=5, max_length=64, max_eval_samples=9, evaluate=False)
    saved = config_dict(config)
    assert Q.config_from_dict(**saved) == config
    assert step_config("quantize", saved) == config  # a suite or a cache entry rebuilds the same config
    with pytest.raises(LeanError, match="not both"):
        Q.config_from_dict(method="bnb-int8", quantization=saved["quantization"])


def test_a_config_from_a_newer_lean_is_refused_by_name():
    import lean.quantize as Q
    from lean.errors import LeanError

    with pytest.raises(LeanError, match="version 2 .*upgrade lean"):
        Q.method_config_from_dict({"method": "bnb-nf4", "version": Q.CONFIG_VERSION + 1})
    with pytest.raises(LeanError, match="has no option group_size"):
        Q.method_config_from_dict({"method": "bnb-nf4", "group_size": 32})


@pytest.mark.parametrize("make,message", [
    (lambda Q: Q.BnbInt8Config(threshold=float("nan")), "--threshold must be >= 0 and finite"),
    (lambda Q: Q.BnbInt8Config(threshold=float("inf")), "--threshold must be >= 0 and finite"),
    (lambda Q: Q.BnbNF4Config(blocksize=0), "--blocksize must be one of"),
    (lambda Q: Q.BnbNF4Config(blocksize=-64), "--blocksize must be one of"),
    (lambda Q: Q.BnbNF4Config(double_quant="yes"), "--double-quant must be true or false"),
    (lambda Q: Q.DynamicInt8Config(per_channel=1), "--per-channel must be true or false"),
    (lambda Q: Q.QuantizeStepConfig(Q.BnbNF4Config(), calibration_samples=-1), "--calibration-samples must be"),
    (lambda Q: Q.QuantizeStepConfig(Q.BnbNF4Config(), calibration_samples=float("nan")), "--calibration-samples must be"),
    (lambda Q: Q.QuantizeStepConfig(Q.BnbNF4Config(), max_eval_samples=0), "--max-eval-samples must be"),
    (lambda Q: Q.QuantizeStepConfig(Q.BnbNF4Config(), max_eval_samples=-3), "--max-eval-samples must be"),
    (lambda Q: Q.QuantizeStepConfig(Q.BnbNF4Config(), max_length=0), "--max-length must be between 8 and 8192"),
    (lambda Q: Q.QuantizeStepConfig(Q.BnbNF4Config(), max_length=-1), "--max-length must be between 8 and 8192"),
    (lambda Q: Q.QuantizeStepConfig(Q.BnbNF4Config(), split_seed=-2), "--split-seed must be"),
    (lambda Q: Q.QuantizeStepConfig(Q.BnbNF4Config(), task=""), "--task must be a non-empty name"),
])
def test_out_of_range_and_non_finite_values_are_refused(make, message):
    import lean.quantize as Q
    from lean.errors import LeanError

    with pytest.raises(LeanError, match=message):
        make(Q)


@pytest.mark.parametrize("args,phrase", [
    (["--method", "bnb-int8", "--threshold", "nan"], "--threshold must be >= 0 and finite (0 turns off the outlier decomposition), got nan"),
    (["--method", "bnb-int8", "--threshold", "inf"], "--threshold must be >= 0 and finite"),
    (["--method", "bnb-nf4", "--blocksize", "0"], "--blocksize must be one of"),
    (["--method", "bnb-nf4", "--calibration-samples", "0"], "--calibration-samples must be a whole number >= 1, got 0"),
    (["--method", "bnb-nf4", "--max-eval-samples", "-3"], "--max-eval-samples must be a whole number >= 1, got -3"),
    (["--method", "bnb-nf4", "--max-length", "0"], "--max-length must be between 8 and 8192, got 0"),
])
def test_cli_refuses_bad_numbers_in_one_line_before_any_work(tiny_bert_dir, tmp_path, args, phrase):
    out = tmp_path / "q"
    done = invoke("quantize", str(tiny_bert_dir), "-o", str(out), *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and phrase in lines[0], done.stderr
    assert not out.exists() and not list(tmp_path.glob(".q.tmp-*"))


@pytest.fixture(scope="module")
def saved_dirs(tiny_bert_dir, tmp_path_factory):
    """Each non-default config, applied to the tiny BERT and saved."""
    import lean.quantize as Q
    from lean.models import load_model

    root = tmp_path_factory.mktemp("saved-configs")
    dirs = {}
    for config in _non_default_configs(Q):
        model = Q.quantize_(load_model(str(tiny_bert_dir)).eval(), config)
        dirs[config.method] = (config, Q.save_quantized(model, root / config.method))
    return dirs


def test_the_saved_config_loads_back_as_saved(saved_dirs):
    import lean.quantize as Q

    for method, (config, out) in saved_dirs.items():
        assert Q.saved_config(out) == config, method
        assert Q.load_quantized(out).lean_quantization["config"] == asdict(config), method


def test_a_directory_without_lean_s_record_falls_back_to_config_json(saved_dirs, tmp_path):
    """Written by plain transformers or an older lean: the bitsandbytes settings in config.json are what is known."""
    import shutil

    import lean.quantize as Q

    config, out = saved_dirs["bnb-nf4"]
    legacy = tmp_path / "legacy"
    shutil.copytree(out, legacy)
    (legacy / Q.QUANTIZATION_FILE).unlink()
    assert Q.saved_config(legacy) == Q.BnbNF4Config(double_quant=False, compute_dtype="bfloat16")
    model = Q.load_quantized(legacy)
    assert type(model.bert.encoder.layer[0].attention.self.query).__name__ == "Linear4bit"
    assert model.lean_quantization["method"] == "bnb-nf4"

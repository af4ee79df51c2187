"""lean.compat: the transformers 4.57 / 5.x differences, checked against the installed transformers."""

import pytest
import torch

from lean import compat
from lean.errors import LeanError

transformers = pytest.importorskip("transformers")
MAJOR = int(transformers.__version__.split(".")[0])


def test_major_version_is_the_installed_one():
    assert compat.transformers_major() == MAJOR


def test_mask_query_span_reads_both_conventions():
    assert compat.mask_query_span({"cache_position": torch.arange(7, 11)}) == (4, 7)
    assert compat.mask_query_span({"q_length": 4, "q_offset": 7}) == (4, 7)
    assert compat.mask_query_span({"q_length": 3}) == (3, 0)
    assert compat.mask_query_span({"cache_position": torch.tensor([0, 2, 3])}) is None  # not one run
    assert compat.mask_query_span({}) is None


def test_warmup_kwargs_give_the_same_schedule_as_a_ratio(tmp_path):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], **compat.warmup_kwargs(0.1))
    assert args.get_warmup_steps(200) == 20
    if MAJOR >= 5:
        with pytest.raises(LeanError, match=r"\[0, 1\)"):
            compat.warmup_kwargs(1.5)


def test_dtype_kwarg_loads_in_that_dtype(tmp_path):
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)
    transformers.BertModel(config).save_pretrained(tmp_path)
    model = transformers.BertModel.from_pretrained(tmp_path, **compat.dtype_kwarg(torch.float16))
    assert next(model.parameters()).dtype == torch.float16


def test_no_init_weights_skips_random_initialisation():
    weights = torch.zeros(4, 4)
    with compat.no_init_weights():
        torch.nn.init.normal_(weights)  # a no-op inside the context
    assert torch.equal(weights, torch.zeros(4, 4))
    torch.nn.init.normal_(weights)  # restored on the way out
    assert weights.abs().sum() > 0


def test_checkpoints_are_safetensors(tmp_path):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[],
                                          **compat.safetensors_checkpoint_kwargs())
    assert getattr(args, "save_safetensors", True) is True


def test_cli_keeps_library_progress_bars_off_stderr(tmp_path):
    import os
    import subprocess
    import sys

    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)
    transformers.BertModel(config).save_pretrained(tmp_path / "headless")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    # A base model without a classification head: lean loads it, then refuses in one line.
    result = subprocess.run([sys.executable, "-m", "lean.cli", "distill", "--teacher", str(tmp_path / "headless"),
                             "-o", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr

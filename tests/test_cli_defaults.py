"""Each default lives once: a command-line option and the config field it fills agree on their default."""

from __future__ import annotations

import dataclasses

import pytest
import typer

from lean.cli import app

CONFIGS = {
    "finetune": "lean.finetune:FinetuneConfig",
    "distill": "lean.distill:DistillConfig",
    "export": "lean.export:ExportConfig",
}
# options the CLI fills differently on purpose: path-like values, and flags the CLI turns into a field
CLI_ONLY = {"output", "overwrite", "model", "teacher", "checkpoint_dir", "student_config"}


def _config_defaults(target: str) -> dict:
    import importlib

    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


@pytest.mark.parametrize("verb", sorted(CONFIGS))
def test_cli_defaults_equal_the_config_defaults(verb):
    command = typer.main.get_command(app).commands[verb]
    defaults = _config_defaults(CONFIGS[verb])
    compared = 0
    for param in command.params:
        if param.name in CLI_ONLY or param.name not in defaults:
            continue
        compared += 1
        assert param.default == defaults[param.name], (verb, param.name, param.default, defaults[param.name])
    assert compared >= 8, f"{verb}: only {compared} options map onto config fields"

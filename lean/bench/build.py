"""The build subprocess: one step of a chain, or one fit of a fitted kind, into its cache directory.

    python -m lean.bench.build SPEC.json

SPEC.json (written by lean.bench.chains): step, options, out, result, and either source and entry (a
registered step, run through lean.steps.run_step) or task (a kind with a fit, lean.bench.kinds).
It writes {"status", "error"} to spec["result"]; a training step prints PROGRESS lines for the
harness's eta. Child side of lean.bench: a crash or a timeout marks one row, and run_step's atomic
write leaves no half-written directory.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

from lean.bench import protocol
from lean.bench.kinds import KINDS
from lean.bench.worker import classify_error, error_text

TRAINING_STEPS = {"finetune", "distill"}  # steps that run a transformers Trainer (their progress gives an eta)


def report_trainer_progress() -> None:
    """Make every transformers Trainer in this process print PROGRESS lines (for the eta)."""
    try:
        import transformers
        from transformers import TrainerCallback
    except ImportError:
        return

    class BenchProgress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                print(protocol.progress_line(state.global_step, state.max_steps), flush=True)

    original = transformers.Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(BenchProgress())

    transformers.Trainer.__init__ = init


def build(spec: dict[str, Any]) -> None:
    """Make spec["out"]: fit a fitted kind on its task, or run a registered step on its source."""
    from lean.steps import STEPS, register_step, run_step, step_config

    kind = KINDS.get(spec["step"])
    if kind is not None and kind.fit is not None:  # fitted on the task, not built from a model
        kind.fit(spec["task"], kind.config(**spec["options"]), spec["out"])
        return
    if tuple(STEPS.get(spec["step"], ())) != tuple(spec["entry"]):
        register_step(spec["step"], *spec["entry"])
    config = step_config(spec["step"], spec["options"])
    if spec["step"] in TRAINING_STEPS:  # importing transformers costs seconds; only trainers report steps
        report_trainer_progress()
    run_step(spec["step"], spec["source"], config, spec["out"])


def main(spec_file: str) -> int:
    import signal

    # SIGINT raises even when the harness was started with it ignored (a background job), so a stopped
    # step still removes its temp directory
    signal.signal(signal.SIGINT, signal.default_int_handler)
    spec = json.loads(Path(spec_file).read_text())
    result: dict[str, Any] = {"status": "ok"}
    try:
        build(spec)
    except Exception as e:  # the step's failure is this variant's row; the harness goes on
        traceback.print_exc()
        result = {"status": classify_error(e), "error": error_text(e)}
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m lean.bench.build SPEC.json", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))

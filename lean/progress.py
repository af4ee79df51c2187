"""A rich progress bar for transformers' Trainer: steps, loss and eta, on the main process only."""

from __future__ import annotations

import sys

from transformers import TrainerCallback


class RichProgressCallback(TrainerCallback):
    def __init__(self, description: str):
        self.description = description
        self.progress = None
        self.task_id = None
        self.loss = float("nan")

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), console=Console(file=sys.stderr))
        self.progress.start()
        self.task_id = self.progress.add_task(self.description, total=state.max_steps, loss="-")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task_id, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.progress.update(self.task_id, loss=f"{logs['loss']:.4f}")
        if "eval_accuracy" in logs:
            self.progress.console.print(f"  epoch {logs.get('epoch', 0):.2f}: validation accuracy {logs['eval_accuracy']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

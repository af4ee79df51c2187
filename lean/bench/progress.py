"""The progress display of a bench run: variant i/N, its phase (a build's own eta), elapsed, eta.

Parent side of lean.bench. On a terminal a rich progress line; otherwise a line per phase, and a
progress line at most every 30 s.
"""

from __future__ import annotations

import time


def training_progress(label: str, done: int, total: int, first: tuple[int, float], now: float) -> str:
    """'label: done/total training steps, eta m:ss', the rate taken from the first reported step on: the
    setup before it (loading, caching a teacher's logits) is no training step. No eta until a step passed."""
    steps, elapsed = done - first[0], now - first[1]
    eta = f", eta {_clock(elapsed / steps * (total - done))}" if steps > 0 else ""
    return f"{label}: {done}/{total} training steps{eta}"


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """A rich progress line: variant i/N, its phase (with a step's own eta while building), elapsed, eta."""

    def __init__(self, console, total: int, enabled: bool = True):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self.bar = None
        self.total = total
        self._last_kind, self._last_print = None, 0.0
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(bar_width=20),
                                MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                TextColumn("{task.fields[phase]}"), console=self.console)
            self.task = self.bar.add_task("bench", total=total, phase="")

    def start(self):
        if self.bar:
            self.bar.start()

    def stop(self):
        if self.bar:
            self.bar.stop()

    def variant(self, name: str, index: int):
        if self.bar:
            self.bar.update(self.task, description=f"{name}", phase="")
        else:
            self.console.print(f"[{index + 1}/{self.total}] {name}", highlight=False)

    def section(self, text: str):
        """A stage of the run that is no single variant (the interleaved latency)."""
        if self.bar:
            self.bar.update(self.task, description=text, phase="")
        else:
            self.console.print(text, highlight=False)

    def phase(self, text: str):
        if self.bar:
            self.bar.update(self.task, phase=text)
            return
        # without a terminal: a line when the phase changes, and a progress line at most every 30 s
        kind = text.split(":")[0] if text.startswith("build") else text  # a build's step counter is not a new phase
        now = time.monotonic()
        if kind != self._last_kind or now - self._last_print >= 30:
            self.console.print(f"    {text}", highlight=False)
            self._last_kind, self._last_print = kind, now

    def done(self, completed: int):
        if self.bar:
            self.bar.update(self.task, completed=completed)

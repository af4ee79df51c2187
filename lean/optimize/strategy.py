"""The search: measure the cheap things first, prune what cannot win, keep going while time remains.

    search = Search(space.candidates(), reference, measure, budget, "latency", store)
    outcome = search.run()

`measure(candidate, mode)` is injected (lean.optimize.adapter measures through `lean bench`; tests pass a
fake), with mode "full" (validation and test quality, latency, memory, size) or "probe" (latency,
memory and size only). The rules, in the order they are applied to each candidate, cheapest first:

- a candidate already measured in this run directory is read back, not measured again (--resume);
- a chain whose prefix (the same student with the reference runtime) broke the budget or failed to
  build is not extended;
- while a passing candidate exists, a chain whose student has not been trained yet is first measured
  as a probe (the same chain with an untrained student, in seconds): when the probe cannot beat the
  best passing candidate on the objective, the student is never distilled for it;
- everything else is measured in full; the search goes on after the first pass, until the space is
  exhausted, the time budget or --max-trials is spent, or Ctrl-C.

Selection reads only validation figures; test figures are carried for the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from lean.errors import LeanError, first_line
from lean.optimize.config import OBJECTIVES, Budget
from lean.optimize.levels import PLAINER_MARGIN, export_level, plainer_export
from lean.optimize.space import TEACHER, Candidate
from lean.optimize.trials import Figures, Trial, TrialStore

LATENCY_FIELDS = ("latency_ms", "throughput_sps")  # the objectives measured in a latency cell
# a probe is pruned only when it is this much slower (or larger) than the best passing candidate:
# a probe and its trained model share an architecture, but two measurements on a shared machine differ
PRUNE_MARGIN = 0.05

MeasureFn = Callable[[Candidate, str], Figures]


@dataclass
class Outcome:
    reference: Trial
    trials: list[Trial]  # every candidate trial of the run, resumed ones included (probes too)
    chosen: Trial | None
    met_budget: bool  # False: `chosen` is the closest candidate, not a passing one
    stop_reason: str
    interrupted: bool = False
    measured: dict[str, int] = field(default_factory=dict)  # measurements made by this process, by mode


class Search:
    def __init__(self, candidates: list[Candidate], reference: Candidate, measure: MeasureFn, budget: Budget,
                 objective: str, store: TrialStore, time_budget_s: float | None = None, max_trials: int | None = None,
                 log: Callable[[str], None] = print, available: Callable[[Candidate], str | None] = lambda c: None,
                 clock: Callable[[], float] | None = None):
        self.candidates, self.reference, self.measure = candidates, reference, measure
        self.budget, self.store, self.log, self.available = budget, store, log, available
        self.clock = clock or (lambda: time.monotonic())
        self.field, self.larger_better = OBJECTIVES[objective]
        self.objective = objective
        self.deadline = None if time_budget_s is None else self.clock() + time_budget_s
        self.max_trials = max_trials
        self.measured = {"full": 0, "probe": 0}
        self.ref: Trial | None = None
        self.trials: list[Trial] = []

    # ---- figures -----------------------------------------------------------------------------------

    def cost(self, trial: Trial | Figures) -> float | None:
        """The objective as a number to minimise."""
        value = getattr(trial, self.field)
        if not isinstance(value, (int, float)):
            return None
        return -value if self.larger_better else value

    def unreliable(self, trial: Trial | Figures) -> bool:
        """Whether the objective is a latency figure its rounds do not support (lean.bench.reliability):
        such a trial is ranked after every trial whose figure holds, and prunes nothing."""
        return self.field in LATENCY_FIELDS and bool(trial.latency_unreliable)

    def fastest(self) -> Trial | None:
        passing = [t for t in self.trials if t.kind == "candidate" and t.passed and self.cost(t) is not None]
        return min(passing, key=lambda t: (self.unreliable(t), self.cost(t), t.loss), default=None)

    def best(self) -> Trial | None:
        """The fastest passing candidate, or the plainest export of its chain (unfused; int8-dynamic) that also
        passes and is within PLAINER_MARGIN of it (lean.optimize.levels)."""
        fastest = self.fastest()
        if fastest is None:
            return None
        bound = self.cost(fastest) + abs(self.cost(fastest)) * PLAINER_MARGIN
        plainer = [t for t in self.trials if t.kind == "candidate" and t.passed and self.cost(t) is not None
                   and self.cost(t) <= bound and self.unreliable(t) <= self.unreliable(fastest)
                   and plainer_export(fastest.chain, t.chain)]
        return min(plainer, key=lambda t: (export_level(t.chain)[0], self.cost(t)), default=fastest)

    def closest(self) -> Trial | None:
        """The measured candidate nearest the budget (by its validation loss), when none passes."""
        scored = [t for t in self.trials if t.kind == "candidate" and t.status == "ok" and t.loss is not None]
        return min(scored, key=lambda t: (t.loss, self.unreliable(t),
                                          self.cost(t) if self.cost(t) is not None else float("inf")), default=None)

    def time_left(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - self.clock())

    # ---- measuring ---------------------------------------------------------------------------------

    def _judge(self, trial: Trial) -> Trial:
        if trial.kind == "probe" or trial.status != "ok" or self.ref is None:
            return trial
        trial.loss = self.budget.loss(self.ref.validation, trial.validation)
        trial.test_loss = self.budget.loss(self.ref.test, trial.test)
        trial.passed = trial.loss is not None and trial.loss <= self.budget.allowed + 1e-9
        return trial

    def _run(self, candidate: Candidate, mode: str, kind: str) -> Trial:
        """The stored measurement of this chain, or a new one (appended to the store at once)."""
        target = candidate if mode == "full" else Candidate(
            f"{candidate.name}@probe", candidate.student, candidate.runtime, candidate.probe_steps or candidate.steps,
            candidate.load, candidate.requires, candidate.cost)
        known = self.store.measured(kind, target.key())
        if known is not None:
            trial = self._judge(known)
        else:
            started = self.clock()
            figures = self.measure(target, mode)
            self.measured[mode] += 1
            trial = self.store.add(self._judge(Trial.of(figures, name=target.name, kind=kind, key=target.key(),
                                                        chain=target.chain(), load=target.load,
                                                        wall_s=round(self.clock() - started, 2))))
        if kind != "reference":
            self.trials.append(trial)
        return trial

    def _skip(self, candidate: Candidate, status: str, reason: str) -> Trial:
        trial = self.store.add(Trial(status=status, name=candidate.name, kind="candidate", key=candidate.key(),
                                     chain=candidate.chain(), load=candidate.load, reason=reason))
        self.trials.append(trial)
        return trial

    # ---- rules -------------------------------------------------------------------------------------

    def _broken_prefix(self, candidate: Candidate) -> Trial | None:
        """A measured candidate whose chain is a strict prefix of this one's and which failed or broke the budget."""
        for trial in self.trials:
            if trial.kind != "candidate" or trial.status in ("pruned", "skipped"):
                continue
            n = len(trial.chain)
            if 0 < n < len(candidate.steps) and trial.chain == candidate.chain()[:n] and \
                    (trial.status != "ok" or trial.passed is False):
                return trial
        return None

    def _student_trained(self, candidate: Candidate) -> bool:
        """Whether a full measurement already built this candidate's student (so a probe saves nothing)."""
        return candidate.student == TEACHER or any(
            t.kind == "candidate" and t.status == "ok" and t.name.split("+")[0] == candidate.student
            for t in self.trials)

    def _stop(self, started_full: int) -> str | None:
        if self.deadline is not None and self.clock() >= self.deadline:
            return "the time budget is spent"
        if self.max_trials is not None and started_full >= self.max_trials:
            return f"--max-trials {self.max_trials} reached"
        return None

    def _consider(self, candidate: Candidate) -> Trial:
        reason = self.available(candidate)
        if reason:
            return self._skip(candidate, "skipped", reason)
        broken = self._broken_prefix(candidate)
        if broken is not None:
            why = "failed" if broken.status != "ok" else "broke the budget"
            return self._skip(candidate, "pruned", f"its prefix {broken.name} {why}")
        best = self.best()
        if best is not None and candidate.probe_steps and not self._student_trained(candidate):
            probe = self._run(candidate, "probe", "probe")
            self.log(self.line(probe))
            if probe.status != "ok":  # the same chain with an untrained student: a trained one fails there too
                return self._skip(candidate, "pruned", f"its untrained probe {probe.status}: {first_line(probe.error, 160)}")
            cost, bound = self.cost(probe), self.cost(best)
            if cost is not None and cost >= bound + abs(bound) * PRUNE_MARGIN \
                    and not self.unreliable(probe) and not self.unreliable(best):
                return self._skip(candidate, "pruned", f"its untrained probe ({self._value(probe)}) cannot beat "
                                                       f"{best.name} ({self._value(best)})")
            if self.deadline is not None and self.clock() >= self.deadline:  # no distillation past the budget
                return self._skip(candidate, "skipped", "the time budget ran out after its probe")
        return self._run(candidate, "full", "candidate")

    # ---- the run -----------------------------------------------------------------------------------

    def run(self) -> Outcome:
        if self.store.measured("reference", self.reference.key()) is None:
            self.log(f"{self.reference.name}: measuring it first (a base model given instead of a teacher is "
                     "fine-tuned before that, which takes minutes); then one line per trial as it ends")
        self.ref = self._run(self.reference, "full", "reference")
        if self.ref.status != "ok" or self.budget.loss(self.ref.validation, self.ref.validation) is None:
            raise LeanError(f"the teacher could not be measured ({self.ref.status}: {self.ref.error or 'no ' + self.budget.metric}), "
                            "so no budget can be judged: check the teacher with `lean bench` first")
        self.log(self.line(self.ref))
        stop, interrupted, started_full = "every candidate of the space was considered", False, 0
        try:
            for candidate in self.candidates:
                reason = self._stop(started_full)
                if reason:
                    stop = reason
                    break
                before = self.measured["full"]
                trial = self._consider(candidate)
                started_full += self.measured["full"] - before
                self.log(self.line(trial))
        except KeyboardInterrupt:
            stop, interrupted = "interrupted (Ctrl-C): every finished trial is kept", True
        best, fastest = self.best(), self.fastest()
        if best is not fastest:
            self.log(f"{best.name} is chosen over {fastest.name} ({self._value(best)} vs {self._value(fastest)}): "
                     f"a more optimized export must be more than {PLAINER_MARGIN:.0%} faster than its plainer form")
        chosen = best or self.closest()
        return Outcome(self.ref, self.trials, chosen, best is not None, stop, interrupted, dict(self.measured))

    # ---- progress ----------------------------------------------------------------------------------

    def _value(self, trial: Trial) -> str:
        value = getattr(trial, self.field)
        if value is None:
            return "-"
        units = {"latency_ms": "ms", "throughput_sps": "/s", "peak_memory_mb": "MB", "weights_bytes": "B"}
        if self.field == "weights_bytes":
            return f"{value / 2**20:.1f} MiB"
        return f"{value:.4g} {units[self.field]}"

    def line(self, trial: Trial) -> str:
        """One progress line: the trial's result, the best so far, the time left."""
        if trial.status in ("pruned", "skipped"):
            result = f"{trial.status}: {trial.reason}"
        elif trial.status != "ok":
            result = f"{trial.status}: {(trial.error or '')[:160]}"
        elif trial.kind == "probe":
            result = f"probe {self.objective} {self._value(trial)}"
        else:
            quality = trial.validation.get(self.budget.metric)
            loss = "" if trial.loss is None or trial.kind == "reference" else \
                f" ({self._loss_text(trial.loss)}, {'within' if trial.passed else 'over'} budget)"
            quality = f"{quality:.4f}" if isinstance(quality, (int, float)) else "-"
            result = f"validation {self.budget.metric} {quality}{loss}, {self.objective} {self._value(trial)}" \
                + (" (unreliable: the machine was busy; ranked last)" if self.unreliable(trial) else "")
        best = self.best()
        best_text = f"best {best.name} {self._value(best)}" if best else "no passing candidate yet"
        left = self.time_left()
        left_text = "" if left is None else f" | {int(left // 60)}:{int(left % 60):02d} left"
        cached = " (resumed)" if trial.resumed else ""
        return f"{trial.name}{cached}: {result} | {best_text}{left_text}"

    def _loss_text(self, loss: float) -> str:
        if self.budget.metric == "perplexity":
            return f"perplexity x{loss:.3f}"
        return f"{'-' if loss >= 0 else '+'}{abs(loss):.2f} {'%' if self.budget.relative else 'pt'}"

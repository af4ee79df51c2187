"""lean optimize keeps no slower optimization level: a fused or static-int8 export is chosen over its plainer
form (unfused; int8-dynamic) only when it is more than PLAINER_MARGIN faster and the plainer one is
within the budget too. Over a fake measure function, so the choice is checked exactly and fast.
"""

from __future__ import annotations

import pytest
import yaml

from lean.optimize.config import Budget
from lean.optimize.levels import PLAINER_MARGIN, export_level, plainer_export
from lean.optimize.space import Candidate, parse_space
from lean.optimize.strategy import Search
from lean.optimize.trials import Figures, TrialStore

SPACE = """
name: levels
device: cpu
reference: {load: {attention: sdpa}}
runtimes:
  onnx: {steps: [{export: {}}]}
  onnx-O1: {steps: [{export: {optimize: O1}}]}
  onnx-O2: {steps: [{export: {optimize: O2}}]}
  onnx-int8-dynamic: {steps: [{export: {quantize: int8-dynamic, min_agreement: 0.0}}]}
  onnx-int8-static: {steps: [{export: {quantize: int8-static, min_agreement: 0.0}}]}
"""


def choose(latency: dict[str, float], accuracy: dict[str, float] | None = None, tmp_path=None):
    """Run the search over the space with these latencies (ms) and validation accuracies; the chosen name and log."""
    accuracy = accuracy or {}

    def measure(candidate, mode):
        name = candidate.name
        acc = 0.90 if name == "teacher" else accuracy.get(name, 0.90)
        return Figures(validation={"accuracy": acc}, test={"accuracy": acc}, latency_ms=latency.get(name, 100.0))

    space = parse_space(yaml.safe_load(SPACE))
    reference = Candidate("teacher", "teacher", "reference", [], {"attention": "sdpa"}, [], 0.0)
    lines: list[str] = []
    search = Search(space.candidates(), reference, measure, Budget(max_drop=1.0), "latency",
                    TrialStore(tmp_path / "trials.jsonl"), log=lines.append)
    outcome = search.run()
    return outcome.chosen.name, lines


def test_a_fused_level_barely_faster_than_the_plain_export_is_not_kept(tmp_path):
    # O2 measured 2% faster: within what two measurements differ by, so the unfused export is kept
    name, lines = choose({"teacher+onnx": 50.0, "teacher+onnx-O1": 49.5, "teacher+onnx-O2": 49.0,
                          "teacher+onnx-int8-dynamic": 80.0, "teacher+onnx-int8-static": 90.0}, tmp_path=tmp_path)
    assert name == "teacher+onnx"
    assert any(line.startswith("teacher+onnx is chosen over teacher+onnx-O2") for line in lines)


def test_a_level_that_wins_clearly_is_kept(tmp_path):
    name, lines = choose({"teacher+onnx": 50.0, "teacher+onnx-O1": 48.0, "teacher+onnx-O2": 40.0,
                          "teacher+onnx-int8-dynamic": 80.0, "teacher+onnx-int8-static": 90.0}, tmp_path=tmp_path)
    assert name == "teacher+onnx-O2" and not any("is chosen over" in line for line in lines)


def test_static_int8_is_kept_over_dynamic_only_when_clearly_faster(tmp_path):
    slow = {"teacher+onnx": 60.0, "teacher+onnx-O1": 60.0, "teacher+onnx-O2": 60.0}
    assert choose({**slow, "teacher+onnx-int8-dynamic": 30.0, "teacher+onnx-int8-static": 29.5},
                  tmp_path=tmp_path / "a")[0] == "teacher+onnx-int8-dynamic"
    assert choose({**slow, "teacher+onnx-int8-dynamic": 30.0, "teacher+onnx-int8-static": 20.0},
                  tmp_path=tmp_path / "b")[0] == "teacher+onnx-int8-static"


def test_a_plainer_export_over_the_budget_is_not_chosen(tmp_path):
    # the plain export loses 2 points (over the 1-point budget): the barely faster O2 stays the answer
    name, _ = choose({"teacher+onnx": 50.0, "teacher+onnx-O1": 70.0, "teacher+onnx-O2": 49.0,
                      "teacher+onnx-int8-dynamic": 80.0, "teacher+onnx-int8-static": 90.0},
                     accuracy={"teacher+onnx": 0.88}, tmp_path=tmp_path)
    assert name == "teacher+onnx-O2"


@pytest.mark.parametrize("chain, other, plainer", [
    ([{"export": {"optimize": "O2"}}], [{"export": {}}], True),
    ([{"export": {"optimize": "O2"}}], [{"export": {"optimize": "O1"}}], True),
    ([{"export": {}}], [{"export": {"optimize": "O2"}}], False),
    ([{"export": {"quantize": "int8-static", "calibration_samples": 300}}], [{"export": {"quantize": "int8-dynamic"}}], True),
    ([{"export": {"quantize": "int8-dynamic"}}], [{"export": {}}], False),  # fp32 is another precision, not plainer
    ([{"distill": {"student_layers": 2}}, {"export": {"optimize": "O2"}}], [{"export": {}}], False),  # another model
    ([{"quantize": {"method": "dynamic-int8"}}], [{"export": {}}], False),
])
def test_which_export_is_plainer(chain, other, plainer):
    assert plainer_export(chain, other) is plainer


def test_levels_rank_optimize_and_static():
    assert export_level([{"export": {"optimize": "o3"}}])[0] == (3, 0)
    assert export_level([{"export": {"quantize": "int8-static"}}])[0] == (0, 1)
    assert export_level([{"quantize": {}}]) is None and 0 < PLAINER_MARGIN < 0.2

"""The registry: a new method is one dataclass, one handler, one test (this file is that test's model).

    python -m pytest tests/test_quantize_registry.py -q
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest


@pytest.fixture
def half_method():
    """A method that stores weights in float16: registered for one test, then removed."""
    import torch

    import lean.quantize as Q

    @Q.register_method
    @dataclass
    class HalfConfig(Q.QuantConfig):
        method: str = field(default="test-half", init=False)
        devices = ("cpu",)

    @Q.register_handler(HalfConfig)
    def half(layer, config, device):
        weight, bias = Q.selection.linear_weight(layer)
        q = torch.nn.Linear(weight.shape[1], weight.shape[0], bias is not None, dtype=torch.float16)
        with torch.no_grad():
            q.weight.copy_(weight)
            if bias is not None:
                q.bias.copy_(bias)
        return q

    yield HalfConfig
    Q.METHODS.pop("test-half", None)
    Q.HANDLERS.pop(HalfConfig, None)


def test_a_registered_method_works_through_every_entry_point(half_method):
    import torch

    import lean.quantize as Q

    assert Q.METHODS["test-half"] is half_method
    step = Q.config_from_dict(method="test-half", skip=[])  # suites and the CLI find it by name
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4)).eval()
    weight = model[0].weight.detach().clone()
    Q.quantize_(model, step.quantization)
    assert model[0].weight.dtype == torch.float16 and model.lean_quantization["method"] == "test-half"
    assert torch.equal(model[0].weight.float(), weight.half().float())
    from lean.errors import LeanError

    with pytest.raises(LeanError, match="quantize method 'test-half' has no option threshold"):
        Q.config_from_dict(method="test-half", threshold=1.0)


def test_a_method_without_handler_or_name_is_refused():
    import lean.quantize as Q
    from lean.errors import LeanError

    @dataclass
    class Orphan(Q.QuantConfig):
        method: str = field(default="orphan", init=False)

    import torch

    with pytest.raises(LeanError, match="no handler registered for Orphan"):
        Q.quantize_(torch.nn.Sequential(torch.nn.Linear(4, 4)), Orphan(skip=[]))
    with pytest.raises(LeanError, match="needs a method name"):
        Q.register_method(Q.QuantConfig)
    assert list(Q.METHODS) == ["bnb-int8", "bnb-nf4", "bnb-fp4", "dynamic-int8"]

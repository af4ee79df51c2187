"""The method registry: method name -> config class, config class -> handler (torchao's layout).

Adding a method is one config dataclass decorated with `@register_method`, one handler decorated
with `@register_handler(ThatConfig)` that turns one full-precision layer into its quantized twin,
and one test. This module imports nothing else of lean.quantize, so every other module can use it.
"""

from __future__ import annotations

from typing import Any, Callable

from lean.errors import LeanError

METHODS: dict[str, type] = {}  # "bnb-nf4" -> BnbNF4Config, in registration order (the order errors list them)
HANDLERS: dict[type, Callable[[Any, Any, str], Any]] = {}  # config class -> handler(layer, config, device)


def register_method(config_cls: type) -> type:
    """Class decorator: make a method config known by its `method` name (CLI, suites, saved configs)."""
    name = getattr(config_cls, "method", "")
    if not name:
        raise LeanError(f"{config_cls.__name__} needs a method name: method: str = field(default='my-method', init=False)")
    METHODS[name] = config_cls
    return config_cls


def register_handler(config_type: type) -> Callable:
    """Decorator: `handler(layer, config, device) -> quantized layer` for configs of `config_type`."""
    def wrap(fn):
        HANDLERS[config_type] = fn
        return fn
    return wrap


def method_config_class(method: str) -> type:
    if method not in METHODS:
        raise LeanError(f"unknown quantization method '{method}': known methods are {', '.join(METHODS)}")
    return METHODS[method]


def handler_for(config) -> Callable[[Any, Any, str], Any]:
    handler = HANDLERS.get(type(config))
    if handler is None:
        raise LeanError(f"no handler registered for {type(config).__name__}: register one with @register_handler")
    return handler

"""Watching the real model from tests: a hook before each forward pass of a module; the loads a registry makes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def spy_forward(module: Any, on_call: Callable[[tuple[Any, ...], dict[str, Any]], None]) -> Iterator[None]:
    """Call `on_call(args, kwargs)` before each `module.forward` (it may raise); restore it afterwards."""
    original = module.forward

    @functools.wraps(original)  # keeps forward's signature, which transformers inspects
    def forward(*args: Any, **kwargs: Any) -> Any:
        on_call(args, kwargs)
        return original(*args, **kwargs)

    module.forward = forward
    try:
        yield
    finally:
        del module.forward


@contextmanager
def counted_builds(models: Any) -> Iterator[list[str]]:
    """The ids of the backends the model registry `models` builds in the block (each build is a load)."""
    calls: list[str] = []
    factory = models.factory

    def counting(model: Any, path: Any) -> Any:
        calls.append(model.id)
        return factory(model, path)

    models.factory = counting
    try:
        yield calls
    finally:
        models.factory = factory

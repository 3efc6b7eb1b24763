"""Name -> loss class registry shared by every distillation recipe (VocaLiST and MulT alike).

Loss modules register themselves with ``@register("name")``; configs and the trainer build them with
``build_loss(name, **kwargs)``. Unknown names and unknown keyword arguments become one-line ``UserError``s.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from mtdistill.core.errors import UserError

LOSSES: dict[str, type[nn.Module]] = {}
"""Every registered loss: name -> class (an ``nn.Module`` with ``forward(student_out, teacher_out, labels)``)."""

T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make the loss buildable as ``build_loss(name, ...)``."""

    def decorator(cls: T) -> T:
        existing = LOSSES.get(name)
        # re-registering the same class (module reloaded) is harmless; two classes under one name is a bug
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"loss name {name!r} is already registered by {existing.__module__}.{existing.__qualname__}"
            )
        LOSSES[name] = cls
        cls.registry_name = name
        return cls

    return decorator


BUILTIN_MODULES = (
    "mtdistill.distill.losses",
    "mtdistill.distill.mult.objective",
    "mtdistill.distill.mult.crd",
    "mtdistill.distill.mult.edam",
)
"""Modules whose import registers losses; ``import mtdistill.distill`` imports them all."""


def _ensure_builtin() -> None:
    """Import the modules that register losses, so LOSSES is complete however the package was entered."""
    import importlib

    for module in BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a sibling module not written yet must not break the registry
            if exc.name != module:
                raise


def accepted_kwargs(cls: type) -> list[str] | None:
    """Keyword names the loss constructor takes; None when it takes ``**kwargs`` (anything goes)."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]


def build_loss(name: str, **kwargs: object) -> nn.Module:
    """Instantiate the registered loss ``name`` with ``kwargs`` (the ``loss:`` section of a recipe)."""
    _ensure_builtin()
    if name not in LOSSES:
        raise UserError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    cls = LOSSES[name]
    known = accepted_kwargs(cls)
    if known is not None:
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise UserError(
                f"loss {name!r} got unknown option(s) {', '.join(unknown)}; it accepts: {', '.join(known) or 'none'}"
            )
    return cls(**kwargs)

"""Name -> loss class registry shared by every distillation recipe, each loss tagged with its family.

Loss modules register themselves with ``@register("name", family=VOCALIST)`` (or ``MULT``); configs and the
trainers build them with ``build_loss(name, family=..., **kwargs)``. The two families have incompatible call
signatures (VocaLiST losses: ``loss(student_out, teacher_out, labels)`` on captured sync behaviour; MulT losses:
``loss(student_out, teacher_out, labels, index)`` on MulT outputs), so a recipe of one system may only name losses
of its own family. Unknown names, a loss of the other family and unknown keyword arguments become one-line
``UserError``s.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from mtdistill.core.errors import UserError

VOCALIST = "vocalist"
"""Family of the lip-sync losses (VocaLiST -> MTDVocaLiST recipes, ``mtdistill train`` / ``distill``)."""
MULT = "mult"
"""Family of the MulT -> video-only losses (``mtdistill mult train`` recipes)."""
FAMILIES = {VOCALIST: "VocaLiST", MULT: "MulT"}
"""Family id -> the system's name in messages."""

LOSSES: dict[str, type[nn.Module]] = {}
"""Every registered loss: name -> class (an ``nn.Module``; ``cls.family`` says which system it belongs to)."""

T = TypeVar("T", bound=type)


def register(name: str, *, family: str) -> Callable[[T], T]:
    """Class decorator: make the loss buildable as ``build_loss(name, ...)``; ``family`` is VOCALIST or MULT."""
    if family not in FAMILIES:
        raise ValueError(f"loss {name!r}: family must be one of {sorted(FAMILIES)}, not {family!r}")

    def decorator(cls: T) -> T:
        existing = LOSSES.get(name)
        # re-registering the same class (module reloaded) is harmless; two classes under one name is a bug
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"loss name {name!r} is already registered by {existing.__module__}.{existing.__qualname__}"
            )
        LOSSES[name] = cls
        cls.registry_name = name
        cls.family = family
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
    """Keyword names the loss constructor takes; None when it takes ``**kwargs`` that nothing names.

    A constructor that passes ``**options`` on to its parent's accepts its own names and the parent's (followed up
    the classes until a constructor without ``**kwargs``).
    """
    names: list[str] = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.items()
        names += [n for n, p in params if n != "self" and p.kind not in _VARIADIC and n not in names]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for _, p in params):
            return names
    return None


_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def losses_of(family: str) -> list[str]:
    """Sorted names of the registered losses of one family."""
    _ensure_builtin()
    return sorted(n for n, cls in LOSSES.items() if getattr(cls, "family", None) == family)


def check_loss(name: object, family: str | None = None, where: str = "") -> type[nn.Module]:
    """The class registered as ``name``; one-line ``UserError`` when it is unknown or of another family.

    ``where`` prefixes the message (e.g. "config configs/kd.yaml: 'loss.name'").
    """
    _ensure_builtin()
    at = f"{where}: " if where else ""
    if not isinstance(name, str) or name not in LOSSES:
        known = losses_of(family) if family is not None else sorted(LOSSES)
        raise UserError(f"{at}unknown loss {name!r}; known losses: {', '.join(known)}")
    cls = LOSSES[name]
    have = getattr(cls, "family", None)
    if family is not None and have != family:
        raise UserError(
            f"{at}loss {name!r} is a {FAMILIES.get(have, have)} loss and cannot train a {FAMILIES[family]} "
            f"recipe; {FAMILIES[family]} losses: {', '.join(losses_of(family))}"
        )
    return cls


def build_loss(name: str, family: str | None = None, **kwargs: object) -> nn.Module:
    """Instantiate the registered loss ``name`` with ``kwargs`` (the ``loss:`` section of a recipe).

    ``family`` (VOCALIST or MULT): the recipe's system; a loss of the other family is refused with one line
    naming its family and the losses of the right one. None accepts either (library use).
    """
    cls = check_loss(name, family)
    known = accepted_kwargs(cls)
    if known is not None:
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise UserError(
                f"loss {name!r} got unknown option(s) {', '.join(unknown)}; it accepts: {', '.join(known) or 'none'}"
            )
    return cls(**kwargs)

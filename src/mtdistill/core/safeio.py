"""Safe file IO: atomic writes and a torch.load that never executes pickled code."""

from __future__ import annotations

import _compat_pickle
import contextlib
import functools
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mtdistill.core.errors import UserError


def _umask() -> int:
    """The process umask, read without changing it (thread-safe on Linux; os.umask round trip elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    The data are flushed to disk before the rename, and the file gets the mode a plain ``open`` would give
    (0666 less the umask, 0644 under the usual 022), not ``mkstemp``'s 0600. A kill mid-write leaves the previous
    file intact (and at worst a stray hidden ``.tmp`` file beside it). Every file mtdistill writes goes through
    this function.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.isfile(tmp):
            with open(tmp, "rb+") as fh:  # the data must be on disk before the rename makes them visible
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (`atomic_path`); newlines are written as given."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst`` atomically (`atomic_path`)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


class InertObject:
    """Stands in for a pickled object that is not a tensor or plain container; nothing of it ever runs.

    Each pickled global gets its own placeholder class (``pickled_as`` = (module, name)); calling it (pickle's
    REDUCE / NEWOBJ) builds an empty instance and runs nothing. The state pickle hands over (BUILD) is kept
    in ``__dict__`` so a reader can pick tensors and settings out of it (official MulT whole-model pickles);
    items and appends (dict / list subclasses) are kept in ``inert_items`` / ``inert_list``.
    """

    pickled_as: tuple[str, str] = ("", "")
    dump_patches = False  # legacy torch files compare saved class sources; never write .patch files for them

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slots) from objects with __slots__
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):  # names that would shadow the placeholder's own attributes are dropped
            self.__dict__.update({k: v for k, v in state.items() if isinstance(k, str) and k not in _RESERVED})

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("inert_items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("inert_list", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("inert_list", []).extend(values)


_Inert = InertObject  # the name earlier code used
_RESERVED = {name for name in dir(InertObject) if not name.startswith("_")} | {n for n in dir(object)}
_RESERVED |= {"__setstate__", "__setitem__", "__dict__", "__class__"}


@functools.lru_cache(maxsize=4096)
def _placeholder(module: str, name: str) -> type[InertObject]:
    """The placeholder class for the pickled global ``module.name`` (a plain class; nothing is imported)."""
    attrs = {"pickled_as": (module, name), "__module__": "mtdistill_inert"}  # no source anywhere to look up
    return type("Inert_" + re.sub(r"\W", "_", name)[:80], (InertObject,), attrs)


_ALLOWED = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch", "float32"),
    ("torch", "float16"),
    ("torch", "bfloat16"),
    ("torch", "int64"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
}

# Globals whose only use in a checkpoint is to run code: with refuse_code the load stops at them (one line)
# instead of carrying on with an inert placeholder. Everything else not allowed above stays a placeholder.
_CODE_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "importlib", "runpy", "code", "codeop",
    "shutil", "pty", "socket", "ctypes", "pickle", "_pickle", "marshal", "webbrowser", "multiprocessing",
    "signal", "pdb", "timeit", "platform", "operator", "functools", "types", "inspect", "io", "_io", "commands",
}  # fmt: skip


class _InertUnpickler(pickle.Unpickler):
    """Builds tensors and plain containers; every other global becomes an inert placeholder."""

    refuse_code = False

    def find_class(self, module: str, name: str) -> Any:
        # protocol-2 files (torch.save's) name Python 2 modules (__builtin__ ...), as pickle's fix_imports maps
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        if self.refuse_code and module.split(".")[0] in _CODE_MODULES:
            raise UserError(
                f"it would call {module}.{name} while loading, so it was not loaded (mtdistill never runs code "
                "from a checkpoint)"
            )
        return _placeholder(module, name)


class _RefusingUnpickler(_InertUnpickler):
    refuse_code = True


class _InertPickleModule:
    """A pickle module for torch.load(pickle_module=...) that never runs pickled callables."""

    Unpickler = _InertUnpickler
    load = staticmethod(lambda f, **kw: _InertUnpickler(f, **kw).load())
    __name__ = "mtdistill_inert_pickle"


class _RefusingPickleModule:
    """As `_InertPickleModule`, and globals that can only run code (os.system, eval, ...) stop the load."""

    Unpickler = _RefusingUnpickler
    load = staticmethod(lambda f, **kw: _RefusingUnpickler(f, **kw).load())
    __name__ = "mtdistill_refusing_pickle"


def safe_torch_load(path: str | Path, refuse_code: bool = False) -> Any:
    """torch.load(weights_only=True); for checkpoints that pickle other objects (an MTD training checkpoint
    holding a StepLR, an official MulT ``torch.save(model)``), retry with an unpickler that turns those objects
    into inert placeholders (`InertObject`, state kept) and never imports or runs anything the file names.

    Tensors are mapped to the CPU whatever device the file was saved on (``cuda:0`` tags load on a CPU-only
    machine). Both the zip format and the pre-1.6 (legacy) format are read. ``refuse_code=True`` also stops
    with a `UserError` at globals that only serve to run code (os.system, eval, subprocess, ...).
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Weights only" not in str(exc):
            raise UserError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - truncated zips and corrupt pickles fail in many ways
        raise UserError(f"{path}: not a readable PyTorch checkpoint, or truncated ({_first_line(exc)})") from None
    module = _RefusingPickleModule if refuse_code else _InertPickleModule
    try:
        with warnings.catch_warnings():  # legacy files carry class sources torch compares (and cannot, here)
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=module)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is unusable
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__

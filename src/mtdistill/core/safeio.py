"""Safe file IO: atomic writes and a torch.load that never executes pickled code."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
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


class _Inert:
    """Stands in for any pickled object that is not a tensor or plain container; it keeps no state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


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


class _InertUnpickler(pickle.Unpickler):
    """Builds tensors and plain containers; every other global becomes an inert placeholder."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        return _Inert


class _InertPickleModule:
    """A pickle module for torch.load(pickle_module=...) that never runs pickled callables."""

    Unpickler = _InertUnpickler
    load = staticmethod(lambda f, **kw: _InertUnpickler(f, **kw).load())
    __name__ = "mtdistill_inert_pickle"


def safe_torch_load(path: str | Path) -> Any:
    """torch.load(weights_only=True); for training checkpoints that pickle other objects (e.g. an MTD
    scheduler holding a StepLR), retry with an unpickler that replaces those objects by inert placeholders."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Weights only" not in str(exc):
            raise UserError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - truncated zips and corrupt pickles fail in many ways
        raise UserError(f"{path}: not a readable PyTorch checkpoint, or truncated ({_first_line(exc)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_InertPickleModule)
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is unusable
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__

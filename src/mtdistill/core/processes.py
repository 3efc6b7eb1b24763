"""Worker pools whose processes die with their driver, even when the driver is killed with SIGKILL.

Every process pool in mtdistill (`score`, `prepare`, `synth`) is made by `worker_pool`. Each worker, first thing
in its initializer:

- asks Linux to send it SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``), and
- starts a daemon thread that exits the process once its parent has changed (the portable fallback, on systems
  without ``prctl``; it checks every ``PARENT_CHECK_S`` seconds).

A worker that starts after its driver is already gone exits at once. Without this, workers of a killed driver
keep running their current job (minutes, hundreds of MB each) and then wait forever on their task queue.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from typing import Any

PARENT_CHECK_S = 1.0  # how often the fallback watchdog looks at the parent process
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no prctl: the watchdog thread still applies


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            os._exit(1)


def die_with_parent(driver_pid: int | None = None) -> None:
    """Make the calling process exit when its parent dies; ``driver_pid``: exit now if that process is gone."""
    parent = os.getppid()
    _set_parent_death_signal()
    # the driver may have died before the signal was armed (it is sent only for deaths after prctl)
    if (driver_pid is not None and not _alive(driver_pid)) or os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="mtdistill-parent-watch", daemon=True).start()


def _start_worker(driver_pid: int, initializer: Callable[..., Any] | None, initargs: tuple) -> None:
    die_with_parent(driver_pid)
    if initializer is not None:
        initializer(*initargs)


def worker_pool(
    workers: int,
    *,
    context: BaseContext | str | None = None,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor of ``workers`` processes that exit when this process dies (see the module doc).

    ``context``: a multiprocessing context or start method name ("spawn", "fork", ...; default: Python's).
    ``initializer(*initargs)`` runs in each worker after the parent-death guard is armed; it must be picklable.
    """
    ctx = mp.get_context(context) if isinstance(context, str) or context is None else context
    return ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_start_worker, initargs=(os.getpid(), initializer, initargs)
    )

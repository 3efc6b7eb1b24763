"""The Ray engine's shared machinery: connecting, task slots, collecting results, classifying failures.

`mtdistill.inference.score_ray` and `mtdistill.data.prepare_ray` build on it: each file (score) or shard
(prepare) is one Ray task running the same function as the local engine (`mtdistill.inference.score._score_one`,
`mtdistill.data.prepare.process_shard`), and the driver is the only writer. Ray schedules the tasks over
the nodes and re-runs a task whose worker or node was lost (``max_retries``); the driver writes each result as it
arrives, once: a CSV row set for a video already in the CSV (a re-run task, or an earlier run) is dropped, and a
shard is a pair of files renamed into place (tmp + rename) that a re-run rewrites with the same content. Ray
worker processes are reused across tasks, and each keeps its model (score) and face detector (prepare) in a
per-process cache, so a model is loaded once per worker process, not once per file.

Paths (videos, checkpoint, store) must mean the same thing on every node: a shared file system mounted at the
same path (docs/scale.md). A task that cannot see one stops the run with one line that says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mtdistill.core.errors import UserError
from mtdistill.engines import RAY_EXTRA, Engine

IN_FLIGHT_PER_SLOT = 4  # tasks queued per task slot of the cluster (bounds the driver's pending refs)
MIN_IN_FLIGHT = 16


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--engine ray needs Ray, which is not installed here: {RAY_EXTRA}") from None
    return ray


# ------------------------------------------------------------------------------------------ connecting


def resolve_address(engine: Engine) -> str | None:
    """--ray-address, else $RAY_ADDRESS, else None (Ray then uses a cluster `ray start` began on this machine,
    or starts a local instance)."""
    return engine.address or os.environ.get("RAY_ADDRESS") or None


def _host_port(address: str) -> tuple[str, int]:
    hostport = address.split("://", 1)[1] if "://" in address else address
    hostport = hostport.split("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"bad Ray address {address!r}; expected HOST:PORT (e.g. 10.0.0.1:6379) or ray://HOST:PORT")
    return host.strip("[]"), int(port)


def _run_with_timeout(fn: Callable[[], object], timeout: float) -> tuple[bool, object, BaseException | None]:
    """Run fn in a daemon thread; (finished, result, error). A call that hangs (DNS, a silent host) is left behind."""
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=target, name="mtdistill-ray-connect", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        return False, None, None
    return True, box.get("result"), box.get("error")


def _one_line(exc: object) -> str:
    return " ".join(str(exc).split())[:300]


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """One clear line (UserError) when nothing listens at ADDRESS: before ray.init, which would retry for minutes."""
    host, port = _host_port(address)

    def probe() -> None:
        with socket.create_connection((host, port), timeout=timeout):
            pass

    finished, _, error = _run_with_timeout(probe, timeout + 1.0)
    hint = "start one with `ray start --head` or fix --ray-address / RAY_ADDRESS (docs/scale.md)"
    if not finished:
        raise UserError(f"no Ray cluster at {address}: no answer within {timeout:g} s; {hint}")
    if error is not None:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else _one_line(error)
        raise UserError(f"no Ray cluster at {address} ({reason}); {hint}")


def connect(engine: Engine):
    """ray, connected: to --ray-address / $RAY_ADDRESS, else a new local instance. A bad address is a UserError
    within seconds (nothing listening), or after ``connect_timeout_s`` (something listening that is not Ray)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    address = resolve_address(engine) or "local"
    kwargs: dict = {"address": address, "logging_level": logging.WARNING}
    if engine.num_gpus > 0:
        # workers see every GPU of their node and use the one Ray assigned to the task (cuda:<id>): a worker process
        # is reused across tasks, and CUDA cannot switch devices once initialised (see _gpu_device)
        kwargs["runtime_env"] = {"env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}}
    if address == "local":
        # a new instance on this machine: started from the main thread (its processes die with the starting thread)
        try:
            ray.init(include_dashboard=False, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"cannot start a local Ray instance: {_one_line(exc)}") from None
        return ray
    resolved = _resolve_auto(ray) if address == "auto" else address
    if resolved:
        check_reachable(resolved, timeout=min(5.0, engine.connect_timeout_s))
    logging.getLogger("ray._private.worker").addFilter(_NoThreadWarning())
    finished, _, error = _run_with_timeout(lambda: ray.init(**kwargs), engine.connect_timeout_s)
    if not finished:
        raise UserError(
            f"no Ray cluster answered at {address} within {engine.connect_timeout_s:g} s; check --ray-address / "
            "RAY_ADDRESS (`ray status` on the head node prints it)"
        )
    if error is not None:
        raise UserError(f"cannot connect to Ray at {address}: {_one_line(error)}")
    return ray


class _NoThreadWarning(logging.Filter):
    """ray.init from the connecting thread warns that it set no SIGTERM handler: the default action is right here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def _resolve_auto(ray) -> str | None:
    """The address `--ray-address auto` means (the cluster `ray start` last began on this machine), if Ray says."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address("auto")
    except Exception:  # noqa: BLE001 - private API; ray.init gives its own error (under the timeout)
        return None


def task_slots(engine: Engine) -> int:
    """How many tasks of this size the cluster runs at once now (at least 1)."""
    ray = connect(engine)
    res = ray.cluster_resources()
    slots = res.get("CPU", 0.0) / engine.num_cpus
    if engine.num_gpus > 0:
        slots = min(slots, res.get("GPU", 0.0) / engine.num_gpus)
    return max(1, int(slots))


# ------------------------------------------------------------------------------------------ bookkeeping


@dataclass
class RunStats:
    """What one Ray run did (mtdistill.engines.ray_engine.LAST_STATS after each run; tests and benchmarks read it)."""

    files: int = 0  # inputs this run was given
    done: int = 0  # inputs finished (rows written / shards whose sidecar the driver received)
    failed: int = 0  # of those, inputs that gave an error row (score) or were skipped (prepare)
    lost: list = field(default_factory=list)  # inputs not finished: their tasks failed beyond Ray's retries
    duplicates: int = 0  # results that arrived for inputs already written (dropped: writes are idempotent)
    split: int = 0  # prepare: shards whose worker crashed and that were re-run one input per task
    workers: set = field(default_factory=set)  # (node id, pid) of the worker processes that ran tasks
    model_loads: int = 0  # score: models loaded by workers (once per worker process)
    seconds: float = 0.0


LAST_STATS: RunStats | None = None


class NotShared(Exception):
    """A path the driver sees is missing on a worker's node (no shared storage): stops the run."""


class LoadFailed(Exception):
    """A worker could not load the model: stops the run (every file would fail the same way)."""


def _abort(ray, refs: Sequence, exc: BaseException, what: str) -> UserError:
    for ref in refs:
        with contextlib.suppress(Exception):  # best effort: the driver stops next
            ray.cancel(ref)
    cause = exc.cause if hasattr(exc, "cause") and exc.cause is not None else exc
    if isinstance(cause, NotShared):
        return UserError(f"{cause}; put it on storage that every node mounts at the same path (docs/scale.md)")
    if isinstance(cause, LoadFailed):
        return UserError(str(cause))
    return UserError(f"{what} failed on the cluster: {_one_line(cause)}")


def _node_and_pid() -> tuple[str, int]:
    import ray

    return ray.get_runtime_context().get_node_id(), os.getpid()


def _gpu_device(spec_device: str | None) -> str | None:
    """cuda:<the GPU Ray assigned to this task> when the task holds a GPU (see connect), else the spec's device."""
    import ray

    ids = ray.get_gpu_ids()
    if not ids or (spec_device not in (None, "cuda")):
        return spec_device
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    gid = str(ids[0])
    return f"cuda:{visible.index(gid) if gid in visible else int(gid)}"


def remote_task(ray, fn, engine: Engine, name: str):
    """``fn`` as a Ray task with the engine's resources; Ray re-runs it when its worker or node is lost.

    ``max_calls=0`` keeps worker processes (and the model each caches) across tasks; a task's own exception is
    never retried (it would fail the same way)."""
    return ray.remote(max_calls=0)(fn).options(
        num_cpus=engine.num_cpus,
        num_gpus=engine.num_gpus,
        max_retries=engine.max_retries,
        retry_exceptions=False,
        name=name,
    )


def _collect(ray, pending: dict, timeout: float):
    """Yield (item, result, error) for the tasks finished now: waits up to timeout for the first one."""
    refs = list(pending)
    ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
    if ready:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    for ref in ready:
        item = pending.pop(ref)
        try:
            yield item, ray.get(ref), None
        except Exception as exc:  # noqa: BLE001 - classified by the caller
            yield item, None, exc


def _is_crash(ray, exc: BaseException) -> bool:
    """The task's own worker died on this input (after Ray's retries): the input is the likely cause."""
    return isinstance(exc, ray.exceptions.WorkerCrashedError | ray.exceptions.OutOfMemoryError)


def _bar(total: int, initial: int, desc: str, unit: str, progress: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, disable=not progress, file=sys.stderr, dynamic_ncols=True
    )

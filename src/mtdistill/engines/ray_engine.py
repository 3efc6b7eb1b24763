"""The Ray engine: `score` and `prepare` as Ray tasks on a cluster, the driver as the only writer.

Each file (score) or shard (prepare) is one Ray task running the same function as the local engine
(`mtdistill.inference.score._score_one`, `mtdistill.data.prepare.process_shard`). Ray schedules the tasks over
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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from mtdistill.engines import RAY_EXTRA, Engine
from mtdistill.errors import UserError

IN_FLIGHT_PER_SLOT = 4  # tasks queued per task slot of the cluster (bounds the driver's pending refs)
MIN_IN_FLIGHT = 16
INDEX_EVERY_S = 2.0


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


# ------------------------------------------------------------------------------------------ score


def _score_task(spec, threads: int, video: str, key: str) -> tuple[list[dict], tuple[str, int], bool]:
    """One video on a Ray worker: (rows, (node, pid), whether this call loaded the model)."""
    from mtdistill.inference import score as sc

    device = _gpu_device(spec.device)
    if device != spec.device:
        spec = replace(spec, device=device)
    loaded = False
    if sc._WORKER.get("spec") != spec:  # per-process cache: once per worker process (and model spec)
        for path in (spec.checkpoint, spec.onnx):
            if path and not os.path.exists(path):
                raise NotShared(f"{path} is not visible on node {_node_and_pid()[0][:12]}")
        try:
            sc._init_worker(spec, threads)
        except Exception as exc:  # noqa: BLE001
            raise LoadFailed(f"a Ray worker could not load the model: {_one_line(exc)}") from None
        loaded = True
    if not os.path.exists(video):
        raise NotShared(f"{video} is not visible on node {_node_and_pid()[0][:12]}")
    rows = sc._score_one(video)
    for row in rows:
        row["video"] = key  # the CSV keeps the driver's spelling of the path (resume matches on it)
    return rows, _node_and_pid(), loaded


def score_videos(
    videos: Sequence[str], spec, engine: Engine, csv_path: str | os.PathLike, progress: bool = True
) -> RunStats:
    """Score ``videos`` on the cluster, appending rows to ``csv_path`` as they arrive (the driver writes, once)."""
    global LAST_STATS
    from mtdistill.inference.score import _append, done_videos

    t0 = time.time()
    ray = connect(engine)
    csv_path = Path(csv_path)
    stats = RunStats(files=len(videos))
    LAST_STATS = stats
    if spec.device is None and engine.num_gpus > 0:
        spec = replace(spec, device="cuda")
    # workers do not run in the driver's folder: model paths travel absolute (videos too, below)
    spec = replace(
        spec,
        checkpoint=str(Path(spec.checkpoint).absolute()) if spec.checkpoint else None,
        onnx=str(Path(spec.onnx).absolute()) if spec.onnx else None,
    )
    written = done_videos(csv_path)
    todo = [v for v in videos if v not in written]
    remote = ray.remote(max_calls=0)(_score_task).options(
        num_cpus=engine.num_cpus,
        num_gpus=engine.num_gpus,
        max_retries=engine.max_retries,
        retry_exceptions=False,
        name="mtdistill.score",
    )
    threads = max(1, int(engine.num_cpus))
    queue = list(reversed(todo))
    pending: dict = {}
    limit, limit_at = MIN_IN_FLIGHT, 0.0
    with _bar(len(todo), 0, "score [ray]", "video", progress) as bar:
        while queue or pending:
            if time.time() - limit_at > 5.0:
                limit, limit_at = max(MIN_IN_FLIGHT, IN_FLIGHT_PER_SLOT * task_slots(engine)), time.time()
            while queue and len(pending) < limit:
                video = queue.pop()
                pending[remote.remote(spec, threads, str(Path(video).absolute()), video)] = video
            for video, result, error in _collect(ray, pending, timeout=0.5):
                if error is not None:
                    if isinstance(error, ray.exceptions.RayTaskError):
                        raise _abort(ray, list(pending), error, f"scoring {video}")
                    if not _is_crash(ray, error):
                        stats.lost.append(video)  # node / object lost beyond the retries: no row, a rerun does it
                        continue
                    why = f"{type(error).__name__}: a worker died on this file {engine.max_retries + 1} times"
                    rows = [{"video": video, "error": why}]
                else:
                    rows, worker, loaded = result
                    stats.workers.add(worker)
                    stats.model_loads += int(loaded)
                if video in written:
                    stats.duplicates += 1
                    continue
                _append(csv_path, rows)
                written.add(video)
                stats.done += 1
                stats.failed += int(any(r.get("error") for r in rows))
                bar.update(1)
                bar.set_postfix(failed=stats.failed, remaining=len(queue) + len(pending), refresh=False)
    stats.seconds = round(time.time() - t0, 2)
    if stats.lost:
        print(
            f"warning: {len(stats.lost)} video(s) were not scored (their tasks were lost with their nodes after "
            f"{engine.max_retries} retries); rerun the same command to score them",
            file=sys.stderr,
        )
    return stats


# ------------------------------------------------------------------------------------------ prepare


def _prepare_task(job) -> tuple[dict, tuple[str, int]]:
    """One shard on a Ray worker: process_shard, as a local worker process runs it."""
    from mtdistill.data import prepare as pp

    if not (Path(job.out) / "shards").is_dir():
        raise NotShared(f"the store folder {job.out} is not visible on node {_node_and_pid()[0][:12]}")
    for item in job.items[:1]:
        if not os.path.exists(item.path):
            raise NotShared(f"{item.path} is not visible on node {_node_and_pid()[0][:12]}")
    pp._init_worker(None)
    return pp.process_shard(job), _node_and_pid()


def _crashed_sidecar(root: Path, job, reason: str) -> dict:
    """The sidecar of a one-input shard whose worker kept dying: the input is skipped with the reason."""
    import json

    from mtdistill.data import store as st

    skipped = [
        {"uid": it.uid, "split": it.split, "source": os.path.relpath(it.path, job.src), "reason": reason}
        for it in job.items
    ]
    side = {"id": job.shard_id, "file": None, "sha256": None, "n_utterances": 0, "utterances": [], "skipped": skipped}
    st.atomic_write_text(root / "shards" / f"{st.shard_name(job.shard_id)}.json", json.dumps(side) + "\n")
    return side


def prepare_shards(jobs: Sequence, engine: Engine, root: Path, extra: dict, bar) -> RunStats:
    """Run prepare's shard jobs on the cluster; the driver rewrites index.json from the sidecars as shards land."""
    global LAST_STATS
    from mtdistill.data import store as st
    from mtdistill.data.prepare import _cleanup

    t0 = time.time()
    ray = connect(engine)
    root = Path(root).absolute()
    jobs = [replace(j, out=str(root)) for j in jobs]
    stats = RunStats(files=sum(len(j.items) for j in jobs))
    LAST_STATS = stats
    remote = ray.remote(max_calls=0)(_prepare_task).options(
        num_cpus=engine.num_cpus,
        num_gpus=engine.num_gpus,
        max_retries=engine.max_retries,
        retry_exceptions=False,
        name="mtdistill.prepare",
    )
    next_id = max((j.shard_id for j in jobs), default=-1) + 1
    queue = list(reversed(jobs))
    pending: dict = {}
    finished: set[int] = set()
    limit, limit_at, index_at = MIN_IN_FLIGHT, 0.0, time.time()
    while queue or pending:
        if time.time() - limit_at > 5.0:
            limit, limit_at = max(MIN_IN_FLIGHT, IN_FLIGHT_PER_SLOT * task_slots(engine)), time.time()
        while queue and len(pending) < limit:
            job = queue.pop()
            pending[remote.remote(job)] = job
        landed = False
        for job, result, error in _collect(ray, pending, timeout=0.5):
            if error is not None:
                if isinstance(error, ray.exceptions.RayTaskError):
                    raise _abort(ray, list(pending), error, f"shard {job.shard_id}")
                if not _is_crash(ray, error):
                    stats.lost.append(job.shard_id)
                    continue
                if len(job.items) > 1:  # find the input that kills the worker: one task per input
                    stats.split += 1
                    for item in job.items:
                        queue.append(replace(job, shard_id=next_id, items=(item,)))
                        next_id += 1
                    continue
                side = _crashed_sidecar(root, job, f"{type(error).__name__}: the worker died on this input")
            else:
                side, worker = result
                stats.workers.add(worker)
            if job.shard_id in finished:
                stats.duplicates += 1
                continue
            finished.add(job.shard_id)
            landed = True
            stats.done += len(job.items)
            stats.failed += len(side.get("skipped", []))
            bar.update(len(job.items))
            bar.set_postfix(failed=stats.failed, remaining=stats.files - stats.done, refresh=False)
        if landed and time.time() - index_at > INDEX_EVERY_S:
            st.write_index(root, st.build_index(root, {**extra, "complete": False}))
            index_at = time.time()
    _cleanup(root)  # temporary files of attempts that Ray re-ran elsewhere (their node was lost)
    stats.seconds = round(time.time() - t0, 2)
    if stats.lost:
        st.write_index(root, st.build_index(root, {**extra, "complete": False}))
        raise UserError(
            f"{len(stats.lost)} shard(s) were lost with their nodes after {engine.max_retries} retries; "
            "rerun the same command to finish them (finished shards are kept)"
        )
    return stats

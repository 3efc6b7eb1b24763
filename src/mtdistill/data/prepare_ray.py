"""`prepare --engine ray`: each shard is one Ray task running `process_shard`; the driver keeps index.json.

See `mtdistill.engines.ray_engine` for connecting and the failure rules, docs/scale.md for shared storage.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from mtdistill.core.errors import UserError
from mtdistill.core.safeio import atomic_write_text
from mtdistill.data import prepare as pp
from mtdistill.data import store as st
from mtdistill.engines import Engine, ray_engine
from mtdistill.engines.ray_engine import (
    IN_FLIGHT_PER_SLOT,
    MIN_IN_FLIGHT,
    NotShared,
    RunStats,
    _abort,
    _collect,
    _is_crash,
    _node_and_pid,
    connect,
    remote_task,
    task_slots,
)


def _prepare_task(job) -> tuple[dict, tuple[str, int]]:
    """One shard on a Ray worker: process_shard, as a local worker process runs it."""
    if not (Path(job.out) / "shards").is_dir():
        raise NotShared(f"the store folder {job.out} is not visible on node {_node_and_pid()[0][:12]}")
    for item in job.items[:1]:
        if not os.path.exists(item.path):
            raise NotShared(f"{item.path} is not visible on node {_node_and_pid()[0][:12]}")
    pp._init_worker(None)
    return pp.process_shard(job), _node_and_pid()


def _crashed_sidecar(root: Path, job, reason: str) -> dict:
    """The sidecar of a one-input shard whose worker kept dying: the input is skipped with the reason."""
    skipped = [
        {"uid": it.uid, "split": it.split, "source": os.path.relpath(it.path, job.src), "reason": reason}
        for it in job.items
    ]
    side = {"id": job.shard_id, "file": None, "sha256": None, "n_utterances": 0, "utterances": [], "skipped": skipped}
    atomic_write_text(root / "shards" / f"{st.shard_name(job.shard_id)}.json", json.dumps(side) + "\n")
    return side


def prepare_shards(jobs: Sequence, engine: Engine, root: Path, extra: dict, bar) -> RunStats:
    """Run prepare's shard jobs on the cluster; the driver rewrites index.json from the sidecars as shards land."""
    t0 = time.time()
    ray = connect(engine)
    root = Path(root).absolute()
    jobs = [replace(j, out=str(root)) for j in jobs]
    stats = RunStats(files=sum(len(j.items) for j in jobs))
    ray_engine.LAST_STATS = stats
    remote = remote_task(ray, _prepare_task, engine, "mtdistill.prepare")
    next_id = max((j.shard_id for j in jobs), default=-1) + 1
    queue = list(reversed(jobs))
    pending: dict = {}
    finished: set[int] = set()
    limit, limit_at = MIN_IN_FLIGHT, 0.0
    while queue or pending:
        if time.time() - limit_at > 5.0:
            limit, limit_at = max(MIN_IN_FLIGHT, IN_FLIGHT_PER_SLOT * task_slots(engine)), time.time()
        while queue and len(pending) < limit:
            job = queue.pop()
            pending[remote.remote(job)] = job
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
            stats.done += len(job.items)
            stats.failed += len(side.get("skipped", []))
            bar.update(len(job.items))
            bar.set_postfix(failed=stats.failed, remaining=stats.files - stats.done, refresh=False)
    pp._cleanup(root)  # temporary files of attempts that Ray re-ran elsewhere (their node was lost)
    stats.seconds = round(time.time() - t0, 2)
    if stats.lost:  # no index.json: the store is not complete (readers and a rerun use the shards' sidecars)
        raise UserError(
            f"{len(stats.lost)} shard(s) were lost with their nodes after {engine.max_retries} retries; "
            "rerun the same command to finish them (finished shards are kept)"
        )
    return stats


def ray_runner(engine: Engine) -> Callable[[list, Path, dict, object], RunStats]:
    """The ``run_shards`` hook of `prepare` that builds the shards on the Ray cluster ``engine`` names."""

    def run(jobs: list, root: Path, extra: dict, bar: object) -> RunStats:
        return prepare_shards(jobs, engine, root, extra, bar)

    return run

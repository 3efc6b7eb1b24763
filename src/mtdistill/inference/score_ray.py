"""`score --engine ray`: each video is one Ray task running `_score_one`, the driver appends the rows once.

See `mtdistill.engines.ray_engine` for connecting and the failure rules, docs/scale.md for running on a cluster.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from mtdistill.engines import Engine, ray_engine
from mtdistill.engines.ray_engine import (
    IN_FLIGHT_PER_SLOT,
    MIN_IN_FLIGHT,
    LoadFailed,
    NotShared,
    RunStats,
    _abort,
    _bar,
    _collect,
    _gpu_device,
    _is_crash,
    _node_and_pid,
    _one_line,
    connect,
    remote_task,
    task_slots,
)
from mtdistill.inference import score as sc
from mtdistill.inference.score import ModelSpec, _append, csv_columns, done_videos


def _score_task(spec, threads: int, video: str, key: str) -> tuple[list[dict], tuple[str, int], bool]:
    """One video on a Ray worker: (rows, (node, pid), whether this call loaded the model)."""
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
    t0 = time.time()
    ray = connect(engine)
    csv_path = Path(csv_path)
    stats = RunStats(files=len(videos))
    ray_engine.LAST_STATS = stats
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
    remote = remote_task(ray, _score_task, engine, "mtdistill.score")
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
                _append(csv_path, rows, csv_columns(spec.standards))
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


def ray_runner(engine: Engine) -> Callable[[list[str], ModelSpec, Path, bool], RunStats]:
    """The ``run_videos`` hook of `score_folder` that scores on the Ray cluster ``engine`` names."""

    def run(videos: list[str], spec: ModelSpec, csv_path: Path, progress: bool) -> RunStats:
        return score_videos(videos, spec, engine, csv_path, progress=progress)

    return run

"""Batch sync scoring of a folder of videos: one CSV row per (video, face track), resumable, in parallel.

Rows are appended as videos finish, so an interrupted run keeps its work; a rerun skips every video already in
the CSV (also those that failed: delete their rows to retry). A file that cannot be scored gives one row with the
``error`` column set, and the batch goes on. Aggregates over the whole CSV go to ``<csv stem>.json`` beside it.

Everything that does not depend on a file is checked before the first row is written (`check_csv`,
`check_spec`): the CSV path (a folder, unwritable, one of the videos, or an existing file that is not a score
CSV is refused and left untouched), the values (--workers, --stride, ...), the model and the face detector
(loaded once in the driver).
So an error row is always about its file, never about the options, and a corrected rerun is never stuck
skipping rows that failed for a reason that has nothing to do with them. Workers die with the driver
(`mtdistill.core.processes`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from mtdistill.core.errors import UserError
from mtdistill.core.processes import worker_pool
from mtdistill.core.safeio import atomic_write_text
from mtdistill.core.timing import SEARCH_RANGE
from mtdistill.inference.sync import check_model_options, load_model, sync_video
from mtdistill.media import DEFAULT_DETECTOR
from mtdistill.media.detectors import get_detector
from mtdistill.models.presets import check_preset
from mtdistill.models.syncnet import SyncNet

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".ts", ".wmv")
COLUMNS = (
    "video",
    "track",
    "start_frame",
    "end_frame",
    "n_windows",
    "offset_frames",
    "offset_ms",
    "offset_ms_low",
    "offset_ms_high",
    "confidence",
    "p_value",
    "verdict",
    "drift_ms_per_min",
    "n_segments",
    "lse_c",
    "lse_d",
    "duration_s",
    "model",
    "error",
    "warnings",
)
"""Fixed columns; one column per requested standard (pass / fail / undetermined) follows them."""


def csv_columns(standards: tuple[str, ...] = ()) -> tuple[str, ...]:
    return COLUMNS + tuple(standards)


@dataclass(frozen=True)
class ModelSpec:
    """How each worker loads its own copy of the model (models are not sent between processes)."""

    checkpoint: str | None = None
    preset: str | None = None
    onnx: str | None = None
    kind: str = "vocalist"
    stride: int = 1
    vshift: int = SEARCH_RANGE
    min_confidence: float | None = None
    detector: str = DEFAULT_DETECTOR
    detect_every: int | None = None
    rescan_every: int = 25
    bf16: bool = False
    device: str | None = None
    alpha: float | None = None
    standards: tuple[str, ...] = ()
    full_frame: bool | None = None


def find_videos(folder: str | os.PathLike) -> list[Path]:
    """Video files under ``folder`` (recursive, sorted, by extension)."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; `mtdistill score DIR` scores every video under DIR")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def done_videos(csv_path: Path) -> set[str]:
    """Videos that already have rows in the CSV (resume)."""
    if not csv_path.is_file():
        return set()
    with open(csv_path, newline="") as fh:
        return {row["video"] for row in csv.DictReader(fh) if row.get("video")}


_WORKER: dict = {}


def _init_worker(spec: ModelSpec, threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)

    _WORKER["model"] = load_model(spec.checkpoint, spec.preset, spec.onnx, spec.kind)
    _WORKER["spec"] = spec


def _score_one(video: str) -> list[dict]:
    spec: ModelSpec = _WORKER["spec"]
    try:
        res = sync_video(
            video,
            _WORKER["model"],
            preset=spec.preset,
            stride=spec.stride,
            vshift=spec.vshift,
            min_confidence=spec.min_confidence,
            detector=spec.detector,
            detect_every=spec.detect_every,
            rescan_every=spec.rescan_every,
            bf16=spec.bf16,
            device=spec.device,
            alpha=spec.alpha,
            standards=spec.standards,
            full_frame=spec.full_frame,
        )
    except UserError as exc:
        return [{"video": video, "error": str(exc)}]
    except Exception as exc:  # noqa: BLE001 - one broken file must not stop the batch
        return [{"video": video, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}]
    return [
        {
            "video": video,
            "track": t.track,
            "start_frame": t.start_frame,
            "end_frame": t.end_frame,
            "n_windows": t.n_windows,
            "offset_frames": t.offset_frames,
            "offset_ms": round(t.offset_ms, 2),
            "offset_ms_low": "" if t.offset_ms_interval is None else t.offset_ms_interval[0],
            "offset_ms_high": "" if t.offset_ms_interval is None else t.offset_ms_interval[1],
            "confidence": round(t.confidence, 4),
            "p_value": "" if t.p_value is None else f"{t.p_value:.4g}",
            "verdict": t.verdict,
            "drift_ms_per_min": "" if t.drift_ms_per_min is None else round(t.drift_ms_per_min, 2),
            "n_segments": len(t.segments),
            **t.standards,
            "lse_c": "" if t.lse_c is None else round(t.lse_c, 4),
            "lse_d": "" if t.lse_d is None else round(t.lse_d, 4),
            "duration_s": round(res.duration_s, 3),
            "model": res.model,
            "error": "",
            "warnings": "; ".join(res.warnings),
        }
        for t in res.tracks
    ]


HEADER = ",".join(COLUMNS)  # the first columns of every score CSV (standards add their own after them)


def _append(csv_path: Path, rows: Iterable[dict], columns: tuple[str, ...] = COLUMNS) -> None:
    """Append rows; the header of a new CSV is written atomically first (appends are the resume design)."""
    if not csv_path.is_file() or csv_path.stat().st_size == 0:
        atomic_write_text(csv_path, ",".join(columns) + "\r\n")  # csv.writer's own line ending
    with open(csv_path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
        fh.flush()


def aggregate(csv_path: Path) -> dict:
    """Mean offset, % in sync, mean confidence (and LSE-C / LSE-D means) over the scored tracks of the CSV."""
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    ok = [r for r in rows if not r.get("error")]
    videos = {r["video"] for r in rows}
    failed = {r["video"] for r in rows if r.get("error")}

    def mean(key: str, absolute: bool = False) -> float | None:
        vals = [float(r[key]) for r in ok if r.get(key) not in (None, "")]
        if not vals:
            return None
        arr = np.abs(vals) if absolute else np.asarray(vals)
        return round(float(arr.mean()), 4)

    return {
        "csv": str(csv_path),
        "videos": len(videos),
        "videos_failed": len(failed),
        "tracks": len(ok),
        "mean_offset_frames": mean("offset_frames"),
        "mean_abs_offset_frames": mean("offset_frames", absolute=True),
        "pct_in_sync": round(100.0 * sum(r["verdict"] == "in_sync" for r in ok) / len(ok), 2) if ok else None,
        "pct_out_of_sync": round(100.0 * sum(r["verdict"] == "out_of_sync" for r in ok) / len(ok), 2) if ok else None,
        "pct_undetermined": round(100.0 * sum(r["verdict"] == "undetermined" for r in ok) / len(ok), 2) if ok else None,
        "mean_confidence": mean("confidence"),
        "lse_c_mean": mean("lse_c"),
        "lse_d_mean": mean("lse_d"),
    }


def summary_path(csv_path: str | os.PathLike) -> Path:
    """scores.csv -> scores.json (the aggregates)."""
    return Path(csv_path).with_suffix(".json")


# ------------------------------------------------------------------------------------------- checks


def _first_line(path: Path) -> str:
    with open(path, "rb") as fh:
        return fh.readline(4096).decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")


def _probe_writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"cannot write {what} in {folder} ({exc.strerror or exc}); choose a writable place") from None


def check_csv(csv_path: str | os.PathLike, videos: Sequence[Path] = ()) -> Path:
    """Refuse a --csv that cannot be (or must not be) written, before anything is written; returns its Path.

    Refused: a folder; a place that cannot be written; one of the input ``videos``; an existing file that is not a
    score CSV (its first line is not the score header; an empty file is accepted); a summary path (``.json``
    beside it) that is a folder or an existing file other than a score summary.
    """
    path = Path(csv_path)
    fix = "give --csv a new file name, or the CSV of an earlier `score` run to resume it"
    if path.is_dir():
        raise UserError(f"--csv {path} is a folder; {fix}")
    if path.suffix.lower() == ".json" or path.suffix.lower() in VIDEO_EXTENSIONS:
        raise UserError(f"--csv {path} ends in {path.suffix}; {fix} (e.g. scores.csv)")
    resolved = path.resolve()
    if any(resolved == v.resolve() for v in videos):
        raise UserError(f"--csv {path} is one of the videos to score; {fix}")
    if path.exists():
        if not path.is_file():
            raise UserError(f"--csv {path} is not a regular file; {fix}")
        try:
            first = _first_line(path) if path.stat().st_size else HEADER
            with open(path, "ab"):  # opening for append neither creates (it exists) nor changes the file
                pass
        except OSError as exc:
            raise UserError(f"cannot write --csv {path} ({exc.strerror or exc}); {fix}") from None
        if first.split(",")[: len(COLUMNS)] != list(COLUMNS):
            raise UserError(
                f"--csv {path} exists and is not a score CSV (its first line is not the score header), "
                f"so it was left untouched; {fix}"
            )
    _probe_writable(path.parent, "the --csv file")
    summary = summary_path(path)
    if summary.is_dir():
        raise UserError(f"the aggregates go to {summary}, which is a folder; {fix}")
    if summary.exists() and not _is_summary(summary):
        raise UserError(f"the aggregates go to {summary}, an existing file that is not a score summary; {fix}")
    return path


def _is_summary(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "csv" in data and "pct_in_sync" in data


def check_spec(spec: ModelSpec, workers: int = 1) -> nn.Module:
    """Refuse bad option values, load the model and the detector once: errors here are the options' fault.

    Returns the loaded model (the driver scores with it when ``workers == 1``).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"--workers must be a whole number >= 1, got {workers}")
    check_model_options(spec.stride, spec.vshift, spec.min_confidence, spec.detect_every, spec.rescan_every)
    model = load_model(spec.checkpoint, spec.preset, spec.onnx, spec.kind)
    if not isinstance(model, SyncNet):
        check_preset(spec.preset or getattr(model, "preset", None))
    try:
        get_detector(spec.detector)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user-named class can fail in any way
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise UserError(
            f"--detector {spec.detector!r} cannot be used ({reason}); use haar, mtcnn or package.module:Class"
        ) from None
    return model


def _repair_tail(csv_path: Path) -> None:
    """Drop a half-written last row (a run killed in the middle of an append), so that appends stay rows."""
    if not csv_path.is_file() or csv_path.stat().st_size == 0:
        return
    with open(csv_path, "rb+") as fh:
        fh.seek(-1, io.SEEK_END)
        if fh.read(1) == b"\n":
            return
        fh.seek(0)
        data = fh.read()
        fh.truncate(data.rfind(b"\n") + 1)


def score_folder(
    folder: str | os.PathLike,
    csv_path: str | os.PathLike,
    spec: ModelSpec,
    workers: int = 1,
    progress: bool = True,
    run_videos: Callable[[list[str], ModelSpec, Path, bool], object] | None = None,
) -> dict:
    """Score every not-yet-scored video under ``folder`` into ``csv_path``; returns the aggregates.

    ``run_videos``: scores the videos elsewhere instead of in local worker processes (the Ray engine,
    `mtdistill.inference.score_ray`); it appends their rows to the same CSV with the same resume rules, so the
    result is the same whichever engine scored them."""
    from tqdm import tqdm

    videos = find_videos(folder)
    if not videos:
        raise UserError(f"no video files ({', '.join(VIDEO_EXTENSIONS[:4])}, ...) under {folder}")
    csv_path = check_csv(csv_path, videos)
    # options, model and detector are checked in the driver: a bad option is one clear error, never rows
    model = check_spec(spec, workers)
    _repair_tail(csv_path)
    done = done_videos(csv_path)
    todo = [str(v) for v in videos if str(v) not in done]
    _WORKER.update(model=model, spec=spec)  # the driver scores itself when workers == 1
    if run_videos is not None and todo:  # another engine (Ray) scores them all; the local loop gets none
        run_videos(todo, spec, csv_path, progress)
        todo, progress = [], False
    with tqdm(total=len(todo), desc="score", unit="video", disable=not progress, dynamic_ncols=True) as bar:
        if workers == 1:
            for v in todo:
                _append(csv_path, _score_one(v), csv_columns(spec.standards))
                bar.update(1)
        else:
            # spawn: torch and fork do not mix well; the workers die with this process (core.processes)
            with worker_pool(workers, context="spawn", initializer=_init_worker, initargs=(spec, 1)) as pool:
                futures = [pool.submit(_score_one, v) for v in todo]
                try:
                    for fut in as_completed(futures):
                        _append(csv_path, fut.result(), csv_columns(spec.standards))
                        bar.update(1)
                except BrokenProcessPool:
                    raise UserError(
                        "a score worker process died (out of memory, or killed); the rows so far are kept in "
                        f"{csv_path}: rerun the same command to resume, with fewer --workers if memory is short"
                    ) from None
                finally:
                    for fut in futures:
                        fut.cancel()
    if not csv_path.is_file():
        raise UserError(f"nothing was scored into {csv_path}")
    summary = aggregate(csv_path)
    atomic_write_text(summary_path(csv_path), json.dumps(summary, indent=2) + "\n")
    return summary


def format_table(summary: dict) -> str:
    """The aggregates as a two-column Markdown table."""
    lines = ["| metric | value |", "|---|---|"]
    for k, v in summary.items():
        if k != "csv" and v is not None:
            lines.append(f"| {k} | {v} |")
    return "\n".join(lines)

"""Batch sync scoring of a folder of videos: one CSV row per (video, face track), resumable, in parallel.

Rows are appended as videos finish, so an interrupted run keeps its work; a rerun skips every video already in
the CSV (also those that failed: delete their rows to retry). A file that cannot be scored gives one row with the
``error`` column set, and the batch goes on. Aggregates over the whole CSV go to ``<csv stem>.json`` beside it.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtdistill.core.errors import UserError
from mtdistill.core.timing import SEARCH_RANGE
from mtdistill.inference.sync import load_model, sync_video

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
    detector: str = "haar"
    detect_every: int | None = None
    rescan_every: int = 25
    bf16: bool = False
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
        }
        for t in res.tracks
    ]


def _append(csv_path: Path, rows: Iterable[dict], columns: tuple[str, ...] = COLUMNS) -> None:
    new = not csv_path.is_file() or csv_path.stat().st_size == 0
    with open(csv_path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
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


def score_folder(
    folder: str | os.PathLike, csv_path: str | os.PathLike, spec: ModelSpec, workers: int = 1, progress: bool = True
) -> dict:
    """Score every not-yet-scored video under ``folder`` into ``csv_path``; returns the aggregates."""
    from tqdm import tqdm

    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    videos = find_videos(folder)
    if not videos:
        raise UserError(f"no video files ({', '.join(VIDEO_EXTENSIONS[:4])}, ...) under {folder}")
    done = done_videos(csv_path)
    todo = [str(v) for v in videos if str(v) not in done]
    workers = max(1, int(workers))
    # load the model in the parent first: a bad checkpoint is one clear error, not one per video
    _init_worker(spec, None if workers == 1 else 1)
    with tqdm(total=len(todo), desc="score", unit="video", disable=not progress, dynamic_ncols=True) as bar:
        if workers == 1:
            for v in todo:
                _append(csv_path, _score_one(v), csv_columns(spec.standards))
                bar.update(1)
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")  # torch and fork do not mix well
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(spec, 1)) as pool:
                futures = [pool.submit(_score_one, v) for v in todo]
                for fut in as_completed(futures):
                    _append(csv_path, fut.result(), csv_columns(spec.standards))
                    bar.update(1)
    if not csv_path.is_file():
        raise UserError(f"nothing was scored into {csv_path}")
    summary = aggregate(csv_path)
    summary_path(csv_path).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_table(summary: dict) -> str:
    """The aggregates as a two-column Markdown table."""
    lines = ["| metric | value |", "|---|---|"]
    for k, v in summary.items():
        if k != "csv" and v is not None:
            lines.append(f"| {k} | {v} |")
    return "\n".join(lines)

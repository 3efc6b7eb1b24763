"""`mtdistill prepare SRC OUT`: LRS2 raw / Wav2Lip-preprocessed / plain video folders -> packed store.

Work is split into shards (a few dozen utterances each, one split per shard). Worker processes each build a
whole shard into a temporary HDF5 file, rename it into place, then write the shard's sidecar JSON (also
tmp + rename). A shard is finished exactly when its sidecar exists, so after a crash or SIGKILL a rerun
removes half-written files, skips every input that a sidecar already lists (stored or skipped) and
does the rest: nothing is lost and nothing is stored twice. index.json is rebuilt from the sidecars and written
only when the run is complete (a run with work to do removes the old one first), so an index.json always
describes a finished store; OUT/prepare.json holds the settings a resume must match.

OUT is checked before any work (an existing file, or a place that cannot be written, is refused with one line);
a full disk stops the run with one line, keeping the finished shards for a rerun. Workers die with the driver
(`mtdistill.core.processes`).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mtdistill.core.errors import UserError
from mtdistill.core.processes import worker_pool
from mtdistill.core.safeio import atomic_write_text
from mtdistill.core.timing import SAMPLE_RATE
from mtdistill.data import store as st
from mtdistill.data.layouts import Discovery, SourceItem, discover, read_ground_truth
from mtdistill.media import DEFAULT_DETECTOR
from mtdistill.media.audio import (
    load_audio,
    resample,  # imports torch: only when a wav needs resampling
)
from mtdistill.media.detectors import get_detector
from mtdistill.media.frames import probe
from mtdistill.media.tracking import FaceTrack, iter_mouth_crops, track_faces

SETTINGS = "prepare.json"  # OUT/prepare.json: src, layout, detector of the store (a resume with others is refused)
MIN_FRAMES = 5  # one model window; the pair sampler applies the official > 25 rule itself
WAV2LIP_FACE = 96  # Wav2Lip crops are resized to 96x96 and the lower half (rows 48:96) is kept


@dataclass
class Loaded:
    frames: np.ndarray  # (n, 48, 96, 3) uint8 RGB
    valid: np.ndarray  # (n,) bool
    audio: np.ndarray  # int16 or float32 at 16 kHz
    note: str = ""


# ------------------------------------------------------------------------------------------- readers


def lower_half_of_face(face_bgr: np.ndarray) -> np.ndarray:
    """A tight face crop (any size, BGR as cv2 reads it) -> (48, 96, 3) RGB lower half of its 96x96 resize."""
    face = cv2.resize(face_bgr, (WAV2LIP_FACE, WAV2LIP_FACE), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(face[WAV2LIP_FACE // 2 :, :, ::-1])


def read_wav_16k(path: Path) -> np.ndarray:
    """audio.wav -> int16 samples when it already is 16 kHz 16-bit (bit exact), else float32 resampled mono."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
        if info.samplerate == SAMPLE_RATE and info.subtype == "PCM_16":
            data, _ = sf.read(str(path), dtype="int16", always_2d=True)
            if data.shape[1] == 1:
                return data[:, 0]
            return st.audio_to_int16(data.astype(np.float64).mean(axis=1) / 32768.0)
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise UserError(f"{path}: unreadable wav ({exc})") from None

    return resample(data.mean(axis=1).astype(np.float32), sr, SAMPLE_RATE)


def load_jpgdir(folder: Path) -> Loaded:
    """Wav2Lip-preprocessed utterance: {0,1,...}.jpg tight face crops with gaps + audio.wav."""
    wav = folder / "audio.wav"
    if not wav.is_file():
        raise UserError("no audio.wav")
    indices = {}
    for p in folder.iterdir():
        if p.suffix.lower() == ".jpg" and p.stem.isdigit():
            indices[int(p.stem)] = p
    if not indices:
        raise UserError("no numbered jpgs")
    n = max(indices) + 1
    frames = np.zeros((n, *st.CROP_SHAPE), np.uint8)
    valid = np.zeros(n, np.bool_)
    for i, p in indices.items():
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None or img.size == 0:
            continue  # unreadable jpg: an explicit gap, like a failed detection
        frames[i] = lower_half_of_face(img)
        valid[i] = True
    gaps = n - int(valid.sum())
    return Loaded(frames, valid, read_wav_16k(wav), f"{gaps} gap frame(s)" if gaps else "")


_DETECTOR_CACHE: dict[str, object] = {}


def load_video(path: Path, detector: str, detect_every: int = 1) -> Loaded:
    """A video: 25 fps frames, face tracks and mouth crops (mtdistill.video), 16 kHz audio (mtdistill.media.audio).

    One utterance per video: with several face tracks the longest (then largest) is kept and noted. Frames
    outside the kept track are zeros with valid=False, so frame k stays aligned with audio sample 640 k.
    """
    det = _DETECTOR_CACHE.get(detector)
    if det is None:
        det = _DETECTOR_CACHE.setdefault(detector, get_detector(detector))
    tracks = track_faces(path, detector=det, detect_every=detect_every)

    def area(t: FaceTrack) -> float:
        b = t.boxes[t.valid] if t.valid.any() else t.boxes
        return float(np.mean((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))

    best = max(tracks, key=lambda t: (int(t.valid.sum()), area(t)))
    n = max(best.end_frame + 1, probe(path).n_frames)
    frames = np.zeros((n, *st.CROP_SHAPE), np.uint8)
    valid = np.zeros(n, np.bool_)
    for _tid, start, crops, ok in iter_mouth_crops(path, [best]):
        frames[start : start + len(crops)] = crops
        valid[start : start + len(crops)] = ok
    note = f"{len(tracks)} face tracks; kept track {best.track_id} (longest, then largest)" if len(tracks) > 1 else ""
    return Loaded(frames, valid, load_audio(path), note)


def load_item(item: SourceItem, detector: str, detect_every: int = 1) -> Loaded:
    if item.kind == "jpgdir":
        return load_jpgdir(Path(item.path))
    return load_video(Path(item.path), detector, detect_every)


# ------------------------------------------------------------------------------------------- workers

_PROGRESS: mp.Queue | None = None


def _init_worker(progress: mp.Queue | None) -> None:
    global _PROGRESS
    _PROGRESS = progress
    cv2.setNumThreads(1)  # parallelism comes from the worker processes


@dataclass(frozen=True)
class ShardJob:
    shard_id: int
    items: tuple[SourceItem, ...]
    out: str
    src: str
    detector: str
    detect_every: int
    offsets: dict[str, int]
    compression: str | None


def process_shard(job: ShardJob) -> dict:
    """Build one shard (tmp + rename), then its sidecar (tmp + rename). Returns the sidecar."""
    root = Path(job.out)
    name = st.shard_name(job.shard_id)
    try:
        writer = st.ShardWriter(root / "shards" / f"{name}.h5", compression=job.compression)
    except OSError as exc:
        if _disk_full(exc):
            raise _full_disk_error(root) from None
        raise
    skipped: list[dict] = []
    try:
        for i, item in enumerate(job.items):
            rel = os.path.relpath(item.path, job.src)
            try:
                loaded = load_item(item, job.detector, job.detect_every)
                reason = _reject_reason(loaded)
                if reason:
                    raise UserError(reason)
                meta = {"uid": item.uid, "split": item.split, "source": rel}
                if item.uid in job.offsets:
                    meta["offset_frames"] = int(job.offsets[item.uid])
                if loaded.note:
                    meta["note"] = loaded.note
                writer.add(str(i), loaded.frames, loaded.valid, loaded.audio, **meta)
            except UserError as exc:
                skipped.append({"uid": item.uid, "split": item.split, "source": rel, "reason": _one_line(exc)})
            except Exception as exc:  # a broken input must not stop a multi-hour run; it is reported instead
                if _disk_full(exc):
                    raise  # the output's fault, not the input's: stop (the shard is aborted below)
                skipped.append(
                    {
                        "uid": item.uid,
                        "split": item.split,
                        "source": rel,
                        "reason": _one_line(f"{type(exc).__name__}: {exc}"),
                    }
                )
            if _PROGRESS is not None:
                _PROGRESS.put(1)
        if writer.entries:
            sha = writer.close()
            file = f"{name}.h5"
        else:
            writer.abort()
            sha, file = None, None
    except BaseException as exc:
        with contextlib.suppress(OSError):  # closing a file on a full disk fails too; the tmp file goes anyway
            writer.abort()
        if _disk_full(exc):
            raise _full_disk_error(root) from None
        raise
    side = {
        "id": job.shard_id,
        "file": file,
        "sha256": sha,
        "n_utterances": len(writer.entries),
        "utterances": writer.entries,
        "skipped": skipped,
    }
    _write_text(root, root / "shards" / f"{name}.json", json.dumps(side) + "\n")
    return side


def _disk_full(exc: BaseException) -> bool:
    """True for a full disk or quota (h5py reports it as an OSError without errno, 'errno = 28' in the text)."""
    if not isinstance(exc, OSError):
        return False
    text = str(exc)
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or f"errno = {errno.ENOSPC}," in text


def _full_disk_error(root: Path) -> UserError:
    return UserError(
        f"no space left on the disk of {root}; free some space (or choose another OUT) and rerun the same command "
        "to resume: finished shards are kept, and index.json is written only when the store is complete"
    )


def _write_text(root: Path, path: Path, text: str) -> None:
    """atomic_write_text; a full disk is one clear error."""
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        if _disk_full(exc):
            raise _full_disk_error(root) from None
        raise


def write_index(root: Path, index: dict) -> None:
    """OUT/index.json (the store's format, `mtdistill.data.store`), atomically."""
    _write_text(root, root / "index.json", json.dumps(index, indent=0, sort_keys=False) + "\n")


def _one_line(exc: object) -> str:
    return " ".join(str(exc).split())[:300]


def _reject_reason(loaded: Loaded) -> str:
    n = loaded.frames.shape[0]
    if n < MIN_FRAMES:
        return f"only {n} frame(s); need at least {MIN_FRAMES}"
    if not loaded.valid.any():
        return "no face detected in any frame"
    if loaded.audio.shape[0] < 3200:
        return f"audio has {loaded.audio.shape[0]} samples; need at least 3200 (5 frames at 16 kHz)"
    return ""


# ------------------------------------------------------------------------------------------- driver


def _cleanup(root: Path) -> int:
    """Remove temporary files and shard files without sidecar (a run killed in between). Returns next shard id."""
    shards = root / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    for p in shards.iterdir():
        if p.name.startswith("."):
            p.unlink()
    for name in ("index.json", "skipped.csv", SETTINGS):  # temporary files of atomic writes (`atomic_path`)
        for p in root.glob(f".{name}.*.tmp"):
            p.unlink()
    ids = [-1]
    for p in shards.glob("shard-*.h5"):
        if not p.with_suffix(".json").exists():
            p.unlink()
        ids.append(int(p.stem.split("-")[1]))
    ids += [int(p.stem.split("-")[1]) for p in shards.glob("shard-*.json")]
    return max(ids) + 1


def plan_shards(items: Sequence[SourceItem], shard_size: int, workers: int, first_id: int) -> list[list[SourceItem]]:
    """Group by split (a shard holds one split, so DDP ranks can own whole shards), then chunk."""
    by_split: dict[str, list[SourceItem]] = {}
    for it in items:
        by_split.setdefault(it.split, []).append(it)
    # small inputs: smaller shards so that every worker gets work
    size = max(1, min(shard_size, math.ceil(len(items) / max(1, 4 * workers))))
    out = []
    for split in sorted(by_split):
        group = by_split[split]
        out += [group[i : i + size] for i in range(0, len(group), size)]
    return out


def prepare(
    src: str | os.PathLike,
    out: str | os.PathLike,
    workers: int = 1,
    detector: str = DEFAULT_DETECTOR,
    detect_every: int = 1,
    split_lists: str | os.PathLike | None = None,
    split: str | None = None,
    layout: str | None = None,
    shard_size: int = 64,
    compression: str | None = None,
    progress: bool = True,
    run_shards: Callable[[list[ShardJob], Path, dict, tqdm], object] | None = None,
) -> dict:
    """Run (or resume) a prepare; returns a summary dict (stored, skipped, reasons, shards, seconds).

    ``run_shards``: builds the shard jobs elsewhere instead of in local worker processes (the Ray engine,
    `mtdistill.data.prepare_ray`; ``workers`` then sizes the shards by the cluster's task slots). This process
    stays the only writer of index.json, so the store is the same whichever engine built the shards."""
    t0 = time.time()
    src_p, root = Path(src).resolve(), Path(out)
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    disc: Discovery = discover(src_p, split_lists, split, layout)
    check_out(root)
    extra = {"src": str(src_p), "layout": disc.layout, "detector": detector}
    _check_same_source(root, extra)
    _write_text(root, root / SETTINGS, json.dumps(extra, indent=1) + "\n")
    next_id = _cleanup(root)
    done = set()
    for side in st.read_sidecars(root):
        done.update(e["uid"] for e in side["utterances"])
        done.update(s["uid"] for s in side.get("skipped", []))
    todo = [it for it in disc.items if it.uid not in done]
    if todo:  # the store changes: no index.json until it is complete again (readers fall back to the sidecars)
        (root / "index.json").unlink(missing_ok=True)
    offsets = {uid: int(row["offset_frames"]) for uid, row in read_ground_truth(src_p).items()}
    groups = plan_shards(todo, shard_size, workers, next_id)
    jobs = [
        ShardJob(
            next_id + k,
            tuple(g),
            str(root),
            str(src_p),
            detector,
            detect_every,
            {it.uid: offsets[it.uid] for it in g if it.uid in offsets},
            compression,
        )
        for k, g in enumerate(groups)
    ]
    bar = tqdm(
        total=len(disc.items),
        initial=len(disc.items) - len(todo),
        desc="prepare",
        unit="utt",
        disable=not progress,
        file=sys.stderr,
    )
    if run_shards is not None and jobs:  # another engine (Ray) builds them all; the local loop gets none
        run_shards(jobs, root, extra, bar)
        jobs, workers = [], 1
    if workers <= 1:
        _init_worker(None)
        for job in jobs:
            process_shard(job)
            bar.update(len(job.items))
    else:
        # fork where it exists: workers start at once with the parent's imports (the parent opens no HDF5
        # file and runs no OpenCV / torch work before this point, so there is no state to corrupt)
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        ticks: mp.Queue = ctx.Queue()
        with worker_pool(workers, context=ctx, initializer=_init_worker, initargs=(ticks,)) as pool:
            pending: set[Future] = {pool.submit(process_shard, job) for job in jobs}
            try:
                while pending:
                    finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(ticks, bar)
                    for fut in finished:
                        fut.result()  # re-raise unexpected worker failures (inputs' own errors are skipped)
            except BrokenProcessPool:
                raise UserError(
                    "a prepare worker process died (out of memory, or killed); finished shards are kept: rerun "
                    "the same command to resume, with fewer --workers if memory is short"
                ) from None
            finally:
                for fut in pending:  # on an error, do not start the remaining shards
                    fut.cancel()
            _drain(ticks, bar)
    bar.close()
    index = st.build_index(root, {**extra, "complete": True})
    missing = [{"uid": u, "split": s, "source": "", "reason": r} for u, s, r in disc.missing]
    index["skipped"] = index["skipped"] + missing
    write_skipped_csv(root, index["skipped"])
    write_index(root, index)  # last: index.json exists only for a complete store
    return {
        "out": str(root),
        "layout": disc.layout,
        "inputs": len(disc.items) + len(disc.missing),
        "stored": len(index["utterances"]),
        "skipped": len(index["skipped"]),
        "reasons": dict(Counter(_reason_class(s["reason"]) for s in index["skipped"])),
        "shards": len(index["shards"]),
        "done_before": len(disc.items) - len(todo),
        "notes": disc.notes,
        "seconds": round(time.time() - t0, 2),
    }


def _drain(ticks: mp.Queue, bar: tqdm) -> None:
    n = 0
    while True:
        try:
            n += ticks.get_nowait()
        except queue.Empty:
            break
    if n:
        bar.update(n)


def check_out(root: Path) -> None:
    """Refuse an OUT that is a file, that cannot be written, or that holds an index.json of something else."""
    fix = "give a new folder, or the store of an earlier `prepare` to resume it"
    if root.exists() and not root.is_dir():
        raise UserError(f"OUT {root} is an existing file, not a folder; {fix}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        if _disk_full(exc):
            raise _full_disk_error(root) from None
        raise UserError(f"cannot write the store in {root} ({exc.strerror or exc}); {fix}") from None
    index_path = root / "index.json"
    if index_path.exists() and not (root / "shards").is_dir():
        try:
            ours = json.loads(index_path.read_text()).get("format") == st.FORMAT
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            ours = False
        if not ours:
            raise UserError(f"{index_path} exists and is not the index of a store, so it was left untouched; {fix}")


def _check_same_source(root: Path, extra: dict) -> None:
    index_path = root / SETTINGS
    if not index_path.exists():
        index_path = root / "index.json"  # stores made before prepare.json
    if not index_path.exists():
        return
    try:
        old = json.loads(index_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return  # rebuilt from the sidecars below
    for key in ("src", "layout", "detector"):
        if key in old and old[key] != extra[key]:
            hint = f" (--detector {old[key]})" if key == "detector" else ""
            raise UserError(
                f"{root} already holds a store made with {key}={old[key]!r} (now {extra[key]!r}); "
                f"use a new OUT folder or the same settings{hint} to resume"
            )


def _reason_class(reason: str) -> str:
    """Short reason for the summary table (the first clause of the message, without paths and numbers)."""
    r = reason.split(";")[0]
    if ": " in r and ("/" in r.split(": ")[0] or "\\" in r.split(": ")[0]):
        r = r.split(": ", 1)[1]
    return "".join("N" if c.isdigit() else c for c in r)[:80]


def write_skipped_csv(root: Path, skipped: Sequence[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["uid", "split", "source", "reason"])
    w.writeheader()
    for row in skipped:
        w.writerow({k: row.get(k, "") for k in ("uid", "split", "source", "reason")})
    _write_text(root, root / "skipped.csv", buf.getvalue())


def summary_table(summary: dict) -> str:
    """Markdown summary of a prepare run (printed by the CLI)."""
    lines = [
        f"prepared {summary['stored']} of {summary['inputs']} inputs ({summary['layout']} layout) into "
        f"{summary['shards']} shard(s) at {summary['out']} in {summary['seconds']} s"
        + (f"; {summary['done_before']} were already done" if summary["done_before"] else ""),
    ]
    if summary["reasons"]:
        lines += ["", "| skipped | reason |", "|---:|---|"]
        for reason, count in sorted(summary["reasons"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {count} | {reason} |")
        lines.append(f"\n(details per input: {Path(summary['out']) / 'skipped.csv'})")
    for note in summary["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)

"""`mtdistill prepare SRC OUT`: LRS2 raw / Wav2Lip-preprocessed / plain video folders -> packed store.

Work is split into shards (a few dozen utterances each, one split per shard). Worker processes each build a
whole shard into a temporary HDF5 file, rename it into place, then write the shard's sidecar JSON (also
tmp + rename). A shard is finished exactly when its sidecar exists, so after a crash or SIGKILL a rerun
removes half-written files, skips every input that a sidecar already lists (stored or skipped) and
does the rest: nothing is lost and nothing is stored twice. index.json is rebuilt from the sidecars.
"""

from __future__ import annotations

import csv
import math
import multiprocessing as mp
import os
import queue
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mtdistill.data import store as st
from mtdistill.data.layouts import Discovery, SourceItem, discover, read_ground_truth
from mtdistill.errors import UserError
from mtdistill.media.detectors import DEFAULT_DETECTOR

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
        if info.samplerate == st.SR and info.subtype == "PCM_16":
            data, _ = sf.read(str(path), dtype="int16", always_2d=True)
            if data.shape[1] == 1:
                return data[:, 0]
            return st.audio_to_int16(data.astype(np.float64).mean(axis=1) / 32768.0)
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise UserError(f"{path}: unreadable wav ({exc})") from None
    from mtdistill.audio import resample  # imports torch: only when a wav needs resampling

    return resample(data.mean(axis=1).astype(np.float32), sr, st.SR)


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
    """A video: 25 fps frames, face tracks and mouth crops (mtdistill.video), 16 kHz audio (mtdistill.audio).

    One utterance per video: with several face tracks the longest (then largest) is kept and noted. Frames
    outside the kept track are zeros with valid=False, so frame k stays aligned with audio sample 640 k.
    """
    from mtdistill import video
    from mtdistill.audio import load_audio

    det = _DETECTOR_CACHE.get(detector)
    if det is None:
        det = _DETECTOR_CACHE.setdefault(detector, video.get_detector(detector))
    tracks = video.track_faces(path, detector=det, detect_every=detect_every)

    def area(t: video.FaceTrack) -> float:
        b = t.boxes[t.valid] if t.valid.any() else t.boxes
        return float(np.mean((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))

    best = max(tracks, key=lambda t: (int(t.valid.sum()), area(t)))
    n = max(best.end_frame + 1, video.probe(path).n_frames)
    frames = np.zeros((n, *st.CROP_SHAPE), np.uint8)
    valid = np.zeros(n, np.bool_)
    for _tid, start, crops, ok in video.iter_mouth_crops(path, [best]):
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
    writer = st.ShardWriter(root / "shards" / f"{name}.h5", compression=job.compression)
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
    except BaseException:
        writer.abort()
        raise
    side = {
        "id": job.shard_id,
        "file": file,
        "sha256": sha,
        "n_utterances": len(writer.entries),
        "utterances": writer.entries,
        "skipped": skipped,
    }
    import json

    st.atomic_write_text(root / "shards" / f"{name}.json", json.dumps(side) + "\n")
    return side


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
) -> dict:
    """Run (or resume) a prepare; returns a summary dict (stored, skipped, reasons, shards, seconds)."""
    t0 = time.time()
    src_p, root = Path(src).resolve(), Path(out)
    disc: Discovery = discover(src_p, split_lists, split, layout)
    root.mkdir(parents=True, exist_ok=True)
    extra = {"src": str(src_p), "layout": disc.layout, "detector": detector}
    _check_same_source(root, extra)
    next_id = _cleanup(root)
    done = set()
    for side in st.read_sidecars(root):
        done.update(e["uid"] for e in side["utterances"])
        done.update(s["uid"] for s in side.get("skipped", []))
    todo = [it for it in disc.items if it.uid not in done]
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
    st.write_index(root, st.build_index(root, {**extra, "complete": False}))
    last_index = time.time()
    if workers <= 1:
        _init_worker(None)
        for job in jobs:
            process_shard(job)
            bar.update(len(job.items))
            if time.time() - last_index > 2.0:
                st.write_index(root, st.build_index(root, {**extra, "complete": False}))
                last_index = time.time()
    else:
        # fork where it exists: workers start at once with the parent's imports (the parent opens no HDF5
        # file and runs no OpenCV / torch work before this point, so there is no state to corrupt)
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        ticks: mp.Queue = ctx.Queue()
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(ticks,)) as pool:
            pending: set[Future] = {pool.submit(process_shard, job) for job in jobs}
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(ticks, bar)
                for fut in finished:
                    fut.result()  # re-raise unexpected worker failures (inputs' own errors are skipped)
                if finished and time.time() - last_index > 2.0:
                    st.write_index(root, st.build_index(root, {**extra, "complete": False}))
                    last_index = time.time()
            _drain(ticks, bar)
    bar.close()
    index = st.build_index(root, {**extra, "complete": True})
    missing = [{"uid": u, "split": s, "source": "", "reason": r} for u, s, r in disc.missing]
    index["skipped"] = index["skipped"] + missing
    st.write_index(root, index)
    write_skipped_csv(root, index["skipped"])
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


def _check_same_source(root: Path, extra: dict) -> None:
    index_path = root / "index.json"
    if not index_path.exists():
        return
    import json

    try:
        old = json.loads(index_path.read_text())
    except json.JSONDecodeError:
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
    tmp = root / ".skipped.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["uid", "split", "source", "reason"])
        w.writeheader()
        for row in skipped:
            w.writerow({k: row.get(k, "") for k in ("uid", "split", "source", "reason")})
    os.replace(tmp, root / "skipped.csv")


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

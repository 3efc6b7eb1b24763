"""Synthetic talking-mouth corpus written as real H.264 + AAC .mp4 files (LRS2 folder layout).

Sign convention (as in ARCHITECTURE.md): ``offset_frames = k > 0`` means the audio LEADS the video: the
sound of an event comes k frames before the lips show it. Concretely, video frame v shows the
articulation at time v / fps of a clean timeline and audio sample n plays that timeline at
n / sr + k / fps. The sync estimate (video index - best audio window index) of such a clip is +k.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from tqdm import tqdm

from mtdistill.core.errors import UserError
from mtdistill.core.processes import worker_pool
from mtdistill.core.safeio import atomic_path, atomic_write_text
from mtdistill.core.timing import ANALYSIS_FPS, SAMPLE_RATE
from mtdistill.data import render, speech
from mtdistill.data.layouts import read_ground_truth  # noqa: F401  (re-exported for users of synthetic)
from mtdistill.media.detectors import get_detector

SPLITS = ("pretrain", "train", "val", "test")
DEFAULT_SPLIT_FRACTIONS = {"pretrain": 0.6, "train": 0.1, "val": 0.1, "test": 0.2}


@dataclass
class Clip:
    """Decoded-domain content of one synthetic video (what the mp4 encodes)."""

    frames: np.ndarray  # (n, H, W, 3) uint8 RGB
    audio: np.ndarray  # (n * sr / fps,) float32 in [-1, 1], 16 kHz
    jaw: np.ndarray  # (n,) mouth opening of the speaking face per frame (ground truth for checks)
    fps: float
    offset_frames: int
    offset_ms: float
    """The sound's lead in ms at the first frame (offset_frames x 40 ms at 25 fps unless given sample-precise)."""
    drift: float = 0.0
    """The sound runs (1 + drift) times as fast as the picture."""


def _speaker_rng(seed: int, speaker: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0x5EA, speaker])


def talking_clip(
    seed: int,
    duration_s: float = 3.0,
    offset_frames: int = 0,
    fps: float = ANALYSIS_FPS,
    size: tuple[int, int] | None = None,
    n_faces: int = 1,
    speaker_seed: int | None = None,
    offset_ms: float | None = None,
    drift: float = 0.0,
) -> Clip:
    """Render frames and audio of a talking face. Face 0 (leftmost) speaks; others mouth silent speech.

    speaker_seed fixes the look and voice (so several clips can share a speaker); seed drives the
    words, motion and noise of this clip.
    offset_ms: a lead of the sound at sample precision (overrides offset_frames for the audio; the clip's
    offset_frames is then the nearest whole frame). drift: the sound runs (1 + drift) times as fast as the
    picture, so its lead grows by drift / (1 + drift) seconds per second of video (linear interpolation).
    """
    if duration_s <= 0.2:
        raise UserError(f"duration {duration_s} s is too short; use at least 0.2 s")
    if n_faces < 1:
        raise UserError("n_faces must be >= 1")
    size = size or (160 * n_faces, 160)
    w, h = size
    if offset_ms is not None:
        offset_frames = int(round(offset_ms * fps / 1000.0))
    lead_s = offset_frames / fps if offset_ms is None else offset_ms / 1000.0
    n_frames = int(round(duration_s * fps))
    n_samples = int(round(n_frames * SAMPLE_RATE / fps))
    spk_rng = _speaker_rng(seed if speaker_seed is None else speaker_seed, 0)
    rng = np.random.default_rng([seed, 0xC11])
    # clean timeline with room for the offset on both sides; the pad is the same for |offset| <= 30, so one
    # seed gives the same pictures and the same (shifted) sound whatever the offset
    pad_s = (max(abs(offset_frames), 30) + 2) / fps
    total_s = duration_s * (1 + abs(drift)) + 2 * pad_s + 0.1

    voice = speech.Voice.random(spk_rng)
    looks = [detectable_look(spk_rng, size, (i / n_faces, (i + 1) / n_faces)) for i in range(n_faces)]
    arts = [speech.random_articulation(rng, total_s, voice)]
    arts += [speech.random_articulation(rng, total_s, speech.Voice.random(rng)) for _ in range(n_faces - 1)]

    wave = speech.synthesize(arts[0], voice, rng)
    a0 = (pad_s + lead_s) * SAMPLE_RATE
    if drift == 0 and (offset_ms is None or abs(a0 - round(a0)) < 1e-6):  # the nearest whole sample
        audio = wave[int(round(a0)) : int(round(a0)) + n_samples]
    else:  # sub-sample positions: linear interpolation of the clean sound
        audio = np.interp(a0 + np.arange(n_samples) * (1.0 + drift), np.arange(len(wave)), wave)

    canvas0 = render.background(looks[0], size, rng)
    sprites = [render.face_sprite(app, size) for app in looks]
    poses = [render.head_motion(rng, n_frames, app) for app in looks]
    start_ms = pad_s * 1000.0
    jaws = [speech.frame_track(a.jaw, n_frames, fps, start_ms) for a in arts]
    widths = [speech.frame_track(a.width, n_frames, fps, start_ms) for a in arts]
    blinks = [_blinks(rng, n_frames, fps) for _ in looks]
    frames = np.empty((n_frames, h, w, 3), np.uint8)
    for v in range(n_frames):
        canvas = canvas0.copy()
        for i, app in enumerate(looks):
            render.draw_face(
                canvas, app, sprites[i], poses[i][v], float(jaws[i][v]), float(widths[i][v]), float(blinks[i][v])
            )
        frames[v] = render.finish(canvas, looks[0], rng)
    return Clip(frames, audio.astype(np.float32), jaws[0], fps, offset_frames, lead_s * 1000.0, float(drift))


def detectable_look(
    rng: np.random.Generator, size: tuple[int, int], slot: tuple[float, float], tries: int = 20
) -> render.Appearance:
    """A random look that the default face detector (Haar) finds with the mouth closed, half and fully open and
    at both ends of the head motion; looks it misses are redrawn (a few % of draws: small, dark faces)."""
    detector = get_detector("haar")
    probe_rng = np.random.default_rng(0)  # the probe must not consume the caller's random stream
    app = render.Appearance.random(rng, size, slot)
    for _ in range(tries):
        bg = render.background(app, size, probe_rng)
        sprite = render.face_sprite(app, size)
        ok = True
        for jaw, dx in ((0.0, app.motion), (0.6, -app.motion), (1.0, 0.0)):
            canvas = bg.copy()
            render.draw_face(canvas, app, sprite, render.Pose(dx=dx, dy=0.6 * app.motion), jaw, 0.0)
            if len(detector.detect(render.finish(canvas, app, probe_rng))) == 0:
                ok = False
                break
        if ok:
            return app
        app = render.Appearance.random(rng, size, slot)
    return app


def _blinks(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    out = np.zeros(n, np.float32)
    t = int(rng.uniform(0.5, 3.0) * fps)
    while t < n:
        out[t : t + 4] = (0.5, 1.0, 1.0, 0.5)[: max(0, min(4, n - t))]
        t += int(rng.uniform(2.0, 5.0) * fps)
    return out


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    audio: np.ndarray | None,
    fps: float = ANALYSIS_FPS,
    sr: int = SAMPLE_RATE,
    crf: int = 18,
) -> None:
    """Write RGB frames (H.264, yuv420p) and mono float audio (AAC) to an .mp4, atomically (`atomic_path`)."""
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        raise UserError(f"frame size {w}x{h} must be even for H.264 yuv420p; choose an even width and height")
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        # one thread (no thread-dependent decisions) and no macroblock tree: with it, this libx264 build decodes to
        # pixels up to ~50 levels apart between two encodes of the same frames (widths that are not a multiple of
        # 64, about one run in four); without it the streams are identical, so a seed gives the same corpus
        vs.options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
        vs.thread_count = 1
        aus = None
        if audio is not None:
            aus = out.add_stream("aac", rate=sr, layout="mono")
            aus.bit_rate = 96000
        for i, img in enumerate(frames):
            # rgb -> yuv420p by swscale (BT.601, limited range), the format every player expects
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if aus is not None:
            chunk = 1024
            pcm = np.asarray(audio, np.float32)
            for start in range(0, pcm.shape[0], chunk):
                af = av.AudioFrame.from_ndarray(pcm[None, start : start + chunk], format="fltp", layout="mono")
                af.sample_rate = sr
                af.pts = start
                out.mux(aus.encode(af))
            out.mux(aus.encode(None))


def make_talking_video(path: str | Path, seed: int, **options: Any) -> dict:
    """Write one synthetic talking-face .mp4; positive offset_frames = the audio leads the video.

    Returns {"path", "n_frames", "n_samples", "fps", "offset_frames", "offset_ms", "size", "n_faces"}.
    ``options`` are those of `talking_clip` (duration_s, offset_frames, fps, size, n_faces, speaker_seed,
    offset_ms, drift). size is (W, H), default (160 * n_faces, 160); face 0 (leftmost) is the one that speaks.
    """
    clip = talking_clip(seed, **options)
    write_mp4(path, clip.frames, clip.audio, clip.fps)
    return {
        "path": str(path),
        "n_frames": int(clip.frames.shape[0]),
        "n_samples": int(clip.audio.shape[0]),
        "fps": clip.fps,
        "offset_frames": int(clip.offset_frames),
        "offset_ms": clip.offset_ms,
        "drift": clip.drift,
        "size": [int(clip.frames.shape[2]), int(clip.frames.shape[1])],
        "n_faces": options.get("n_faces", 1),
    }


# ---------------------------------------------------------------------------------------------- corpus


def parse_offsets(text: str) -> tuple[str, list[int]]:
    """'-5,0,3' -> ('choice', [-5, 0, 3]); '-15:15' -> ('range', [-15, 15]) (inclusive)."""
    try:
        if ":" in text:
            lo, hi = (int(x) for x in text.split(":"))
            if lo > hi:
                raise ValueError
            return "range", [lo, hi]
        return "choice", [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"bad --offsets {text!r}; give a list like -5,0,3 or an inclusive range like -15:15") from None


def parse_split_fractions(text: str) -> dict[str, float]:
    """'pretrain=0.6,train=0.1,val=0.1,test=0.2' -> dict (normalised)."""
    out: dict[str, float] = {}
    try:
        for part in text.split(","):
            k, v = part.split("=")
            out[k.strip()] = float(v)
    except ValueError:
        raise UserError(f"bad --splits {text!r}; use e.g. pretrain=0.6,train=0.1,val=0.1,test=0.2") from None
    bad = set(out) - set(SPLITS)
    if bad or sum(out.values()) <= 0 or min(out.values()) < 0:
        raise UserError(f"bad --splits {text!r}; names must be among {SPLITS} with non-negative fractions")
    total = sum(out.values())
    return {k: out.get(k, 0.0) / total for k in SPLITS}


def assign_splits(n: int, fractions: dict[str, float], rng: np.random.Generator) -> list[str]:
    """Exact counts per split (largest remainder), every split with a positive fraction non-empty if n allows."""
    names = [k for k in SPLITS if fractions.get(k, 0) > 0]
    raw = np.array([fractions[k] * n for k in names])
    counts = np.floor(raw).astype(int)
    if n >= len(names):
        counts = np.maximum(counts, 1)
    while counts.sum() > n:
        counts[int(np.argmax(counts))] -= 1
    order = np.argsort(-(raw - np.floor(raw)))
    i = 0
    while counts.sum() < n:
        counts[order[i % len(names)]] += 1
        i += 1
    labels = [name for name, c in zip(names, counts, strict=True) for _ in range(c)]
    return [labels[i] for i in rng.permutation(n)]


@dataclass(frozen=True)
class UttPlan:
    uid: str  # "<speaker>/<utt>"
    split: str
    rel_path: str  # relative to the corpus root
    seed: int
    speaker_seed: int
    duration_s: float
    offset_frames: int


def plan_corpus(
    n_speakers: int,
    n_utterances: int,
    seed: int,
    duration: tuple[float, float],
    offsets: tuple[str, list[int]] = ("choice", [0]),
    offset_splits: Sequence[str] = SPLITS,
    fractions: dict[str, float] | None = None,
) -> list[UttPlan]:
    """Decide names, splits, durations and offsets of every utterance (pure function of the arguments)."""
    if n_speakers < 1 or n_utterances < 1:
        raise UserError("--n-speakers and --n-utterances must be >= 1")
    rng = np.random.default_rng([seed, 0x91A])
    total = n_speakers * n_utterances
    splits = assign_splits(total, fractions or DEFAULT_SPLIT_FRACTIONS, rng)
    plans = []
    for i in range(total):
        spk, utt = divmod(i, n_utterances)
        speaker = f"spk{spk:04d}"
        name = f"{utt + 1:05d}"
        split = splits[i]
        dur = float(np.round(rng.uniform(*duration), 2)) if duration[1] > duration[0] else float(duration[0])
        kind, vals = offsets
        off = int(rng.integers(vals[0], vals[1] + 1)) if kind == "range" else int(vals[int(rng.integers(len(vals)))])
        if split not in offset_splits:
            off = 0
        folder = "pretrain" if split == "pretrain" else "main"
        plans.append(
            UttPlan(
                f"{speaker}/{name}",
                split,
                f"{folder}/{speaker}/{name}.mp4",
                int(seed * 1_000_003 + i),
                int(seed * 1_000_003 + 10_000_000 + spk),
                dur,
                off,
            )
        )
    return plans


def _render_one(args: tuple[UttPlan, str, float, tuple[int, int]]) -> dict:
    plan, root, fps, size = args
    path = Path(root) / plan.rel_path
    if path.exists():  # finished by an earlier (interrupted) run: files appear atomically
        return {"uid": plan.uid, "skipped": True}
    timing = {"duration_s": plan.duration_s, "offset_frames": plan.offset_frames, "fps": fps}
    make_talking_video(path, plan.seed, size=size, speaker_seed=plan.speaker_seed, **timing)
    return {"uid": plan.uid, "skipped": False}


def synth_corpus(
    out: str | Path,
    n_speakers: int = 4,
    n_utterances: int = 10,
    seed: int = 0,
    duration: tuple[float, float] = (3.0, 3.0),
    offsets: str = "0",
    offset_splits: Sequence[str] = SPLITS,
    splits: str | None = None,
    fps: float = ANALYSIS_FPS,
    size: tuple[int, int] = (160, 160),
    workers: int = 1,
    progress: bool = True,
) -> list[UttPlan]:
    """Write the corpus: OUT/{main,pretrain}/<speaker>/<utt>.mp4, OUT/filelists/*.txt, ground truth CSV/JSON."""
    out = Path(out)
    fractions = parse_split_fractions(splits) if splits else DEFAULT_SPLIT_FRACTIONS
    plans = plan_corpus(n_speakers, n_utterances, seed, duration, parse_offsets(offsets), offset_splits, fractions)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(p, str(out), fps, size) for p in plans]
    bar = tqdm(total=len(jobs), desc="synth", unit="video", disable=not progress)
    if workers <= 1:
        for job in jobs:
            _render_one(job)
            bar.update()
    else:
        with worker_pool(workers) as pool:  # the workers die with this process (core.processes)
            for _ in pool.map(_render_one, jobs, chunksize=1):
                bar.update()
    bar.close()
    write_filelists(out, plans)
    write_ground_truth(out, plans, fps, size, seed)
    return plans


def write_filelists(out: Path, plans: Sequence[UttPlan]) -> None:
    """LRS2-style lists: '<speaker>/<utt>' per line; test lines carry a trailing ' NF' token like LRS2."""
    (out / "filelists").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        lines = [p.uid + (" NF" if split == "test" else "") for p in plans if p.split == split]
        atomic_write_text(out / "filelists" / f"{split}.txt", "".join(line + "\n" for line in lines))


def write_ground_truth(out: Path, plans: Sequence[UttPlan], fps: float, size: tuple[int, int], seed: int) -> None:
    rows = [
        {
            "uid": p.uid,
            "split": p.split,
            "path": p.rel_path,
            "offset_frames": p.offset_frames,
            "offset_ms": p.offset_frames * 1000.0 / fps,
            "duration_s": p.duration_s,
            "n_frames": int(round(p.duration_s * fps)),
            "fps": fps,
        }
        for p in plans
    ]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "ground_truth.csv", buf.getvalue())
    meta = {
        "format": "mtdistill-synth/1",
        "seed": seed,
        "fps": fps,
        "size": list(size),
        "sample_rate": SAMPLE_RATE,
        "sign_convention": "offset_frames > 0: the audio leads the video (sound k frames before the lips)",
        "utterances": rows,
    }
    atomic_write_text(out / "ground_truth.json", json.dumps(meta, indent=1) + "\n")

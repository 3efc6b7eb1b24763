"""Media benchmark (run by hand): decode-memory flatness, decode fps, detection fps per detector.

    python benchmarks/bench_media.py                       # 1-min vs 10-min video, 320x240
    python benchmarks/bench_media.py --minutes 1 3 --size 640x360 --detect-every 1 --json out.json

Peak RSS is measured in a fresh child process per video (``resource.getrusage`` max RSS) that runs the full
pipeline: ``track_faces`` (decode + detect + track) then ``iter_mouth_crops`` (second decode + crops, consumed
and dropped). The videos are streamed to disk by ``mtdistill.media.testmedia`` (a moving drawn face, AAC tone).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(path: str, detect_every: int) -> dict:
    """Runs in a fresh process: the pipeline on one video, then its peak RSS."""
    from mtdistill.audio import load_audio
    from mtdistill.video import iter_mouth_crops, track_faces

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    tracks = track_faces(path, detect_every=detect_every)
    t1 = time.perf_counter()
    n_crops = 0
    for _tid, _start, crops, _valid in iter_mouth_crops(path, tracks):
        n_crops += len(crops)
    t2 = time.perf_counter()
    wave = load_audio(path)
    t3 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "tracks": len(tracks),
        "frames": int(max(t.end_frame for t in tracks) + 1),
        "crops": n_crops,
        "audio_samples": int(len(wave)),
        "track_s": t1 - t0,
        "crops_s": t2 - t1,
        "audio_s": t3 - t2,
        "rss_after_imports_mb": base / 1024,
        "peak_rss_mb": peak / 1024,
    }


def make_video(path: Path, minutes: float, size: tuple[int, int]) -> float:
    from mtdistill.media.testmedia import tone, write_video

    n = int(minutes * 60 * 25)
    t0 = time.perf_counter()
    write_video(path, n, 25, size, audio=tone(n * 640, 16000), sr=16000)
    return time.perf_counter() - t0


def decode_fps(path: Path, limit: int = 1500) -> float:
    from mtdistill.video import iter_frames

    t0 = time.perf_counter()
    n = 0
    for n, _rgb in iter_frames(path):
        if n + 1 >= limit:
            break
    return (n + 1) / (time.perf_counter() - t0)


def detect_fps(name: str, size: tuple[int, int], n: int = 50) -> float | None:
    from mtdistill.core.errors import UserError
    from mtdistill.media.testmedia import face_frame_fn
    from mtdistill.video import get_detector

    try:
        det = get_detector(name)
    except UserError:
        return None
    fn = face_frame_fn(*size)
    frames = [fn(i) for i in range(n)]
    det.detect(frames[0])  # warm-up (model load, first allocation)
    t0 = time.perf_counter()
    hits = sum(len(det.detect(f)) > 0 for f in frames)
    fps = n / (time.perf_counter() - t0)
    print(f"  {name} {size[0]}x{size[1]}: {fps:.1f} frames/s, face found in {hits}/{n}", file=sys.stderr)
    return fps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    ap.add_argument("--size", default="320x240", help="WxH of the generated videos")
    ap.add_argument("--detect-every", type=int, default=5)
    ap.add_argument("--detectors", nargs="+", default=["haar", "mtcnn"])
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--child", nargs=2, metavar=("VIDEO", "DETECT_EVERY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return 0
    size = tuple(int(v) for v in args.size.split("x"))
    out: dict = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "size": args.size}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.minutes:
            path = Path(tmp) / f"talk_{minutes:g}min.mp4"
            gen_s = make_video(path, minutes, size)
            dfps = decode_fps(path)
            res = subprocess.run(
                [sys.executable, __file__, "--child", str(path), str(args.detect_every)],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(res.stdout.strip().splitlines()[-1])
            r.update(minutes=minutes, write_s=gen_s, decode_fps=dfps, mb=path.stat().st_size / 2**20)
            rows.append(r)
            print(f"{minutes:g} min: {json.dumps(r)}", file=sys.stderr)
    out["pipeline"] = rows
    out["detect_fps"] = {
        f"{d} {w}x{h}": detect_fps(d, (w, h)) for d in args.detectors for (w, h) in [(320, 240), (1280, 720)]
    }
    print("| video | file MB | frames | decode fps | track_faces s | crops s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['minutes']:g} min {args.size} | {r['mb']:.1f} | {r['frames']} | {r['decode_fps']:.0f} | "
            f"{r['track_s']:.1f} | {r['crops_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    print()
    print("| detector | frame | detections/s |")
    print("|---|---|---|")
    for key, fps in out["detect_fps"].items():
        name, frame = key.split()
        print(f"| {name} | {frame} | {'not installed' if fps is None else f'{fps:.1f}'} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

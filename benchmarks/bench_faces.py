"""Face detectors side by side on real and composed clips (run by hand; results in RESULTS.md and docs/media.md).

    python benchmarks/bench_faces.py [--realvideos DIR] [--out DIR] [--detectors retinaface,haar,mtcnn]
                                     [--strides 5,1] [--no-sync] [--json FILE]

The set (written to --out once, reused after):
- the 4 real clips in shared/realvideos, true box = the reference detector's box on the full-size frame;
- small faces: 3 real face clips, each shrunk so its face is 24, 32, 40, 56 and 80 px wide, moving slowly over a
  face-free real background in a 640x360 frame (`mtdistill.data.scenes`);
- turned faces: 2 clips with a 64 px face turned 25 degrees, and swaying between -30 and +30 degrees;
- two speakers side by side (72 px and 40 px faces);
- for `sync`: synthetic talking faces (audio shifted) at 32, 48 and 64 px over the same background.

Per detector and clip (`track_faces` with its defaults at `--detect-every` 5, and 1 where --strides says):
coverage (frames inside a face track / frames showing the face), tracks per real face, false tracks, crop
jitter (frame-to-frame change of the mouth crop's centre / side relative to the true face, % of the crop
side), face-pass speed (frames / s, decoding included), and the trained tiny model's offset recovery.
Detectors that are not installed (mtcnn without its package) are skipped with a note. Plug-ins:
"package.module:Class" (e.g. candidates measured once, see RESULTS.md).
Skips cleanly (exit 0, a note) when the real clips are absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REALVIDEOS = ROOT.parent / "shared" / "realvideos"
TRAINED_TINY = ROOT / "tests" / "data" / "trained_tiny.safetensors"
CLIPS = {
    "pcavs": "pcavs_Audio_Source_00015.mp4",
    "videoretalking": "videoretalking_face_4.mp4",
    "sadtalker": "sadtalker_WDA_KatieHill_000.mp4",
    "latentsync": "latentsync_demo1_video.mp4",
}
BACKGROUND = "latentsync"
WIDTHS = (24, 32, 40, 56, 80)


def build_set(real: Path, out: Path, only: str | None = None) -> list[dict]:
    """Write (or reuse) every composed clip (those whose name starts with one of the comma-separated `only`
    prefixes); returns [{name, kind, path, boxes: [(n, 4)], widths}]."""
    from mtdistill.data import scenes

    out.mkdir(parents=True, exist_ok=True)
    bg = real / CLIPS[BACKGROUND]
    items = []

    def cached(name: str, kind: str, make) -> None:
        if only and not any(name.startswith(p) for p in only.split(",")):
            return
        path, meta = out / f"{name}.mp4", out / f"{name}.npz"
        if path.is_file() and meta.is_file():
            z = np.load(meta)
            boxes, widths = [z[k] for k in sorted(z.files) if k.startswith("face")], list(z["widths"])
        else:
            sc = make(path)
            boxes, widths = sc.boxes, sc.face_widths
            np.savez(meta, widths=np.asarray(widths), **{f"face{i}": b for i, b in enumerate(boxes)})
        items.append({"name": name, "kind": kind, "path": path, "boxes": boxes, "widths": widths})

    for key, clip in CLIPS.items():

        def real_clip(path, clip=clip):
            frames = scenes.read_frames(real / clip)
            return scenes.Scene(real / clip, len(frames), [scenes.reference_boxes(frames)], [0.0])

        cached(f"real_{key}", "real", real_clip)
        if items and items[-1]["name"] == f"real_{key}":
            items[-1]["path"] = real / clip
    for key in ("sadtalker", "videoretalking", "pcavs"):
        for w in WIDTHS:
            cached(
                f"small_{key}_{w}",
                f"small {w}px",
                lambda p, key=key, w=w: scenes.small_face_scene(real / CLIPS[key], bg, w, p),
            )
    for key in ("sadtalker", "videoretalking"):
        cached(
            f"turned25_{key}",
            "turned 25 deg",
            lambda p, key=key: scenes.small_face_scene(real / CLIPS[key], bg, 64, p, angle=25.0),
        )
        cached(
            f"sway30_{key}",
            "swaying +-30 deg",
            lambda p, key=key: scenes.small_face_scene(real / CLIPS[key], bg, 64, p, angle="sway"),
        )
    for w in (72, 40):
        cached(
            f"two_speakers_{w}",
            f"two speakers {w}px",
            lambda p, w=w: scenes.two_speaker_scene(
                real / CLIPS["sadtalker"], real / CLIPS["videoretalking"], bg, p, w
            ),
        )
    return items


def load_detector(spec: str):
    from mtdistill.core.errors import UserError
    from mtdistill.media.detectors import get_detector

    try:
        return get_detector(spec)
    except UserError as exc:
        print(f"# skipping {spec}: {exc}", file=sys.stderr)
        return None


def run_tracks(item: dict, det, every: int, **opts) -> tuple[list, float, str | None]:
    from mtdistill.core.errors import UserError
    from mtdistill.media.tracking import track_faces

    t0 = time.perf_counter()
    try:
        tracks = track_faces(item["path"], detector=det, detect_every=every, **opts)
        err = None
    except UserError as exc:
        tracks, err = [], str(exc)
    return tracks, time.perf_counter() - t0, err


def measure(items: list[dict], detectors: dict, strides: list[int], every_frame: set[str]) -> list[dict]:
    from mtdistill.data.scenes import score_face

    rows = []
    for item in items:
        for name, det in detectors.items():
            for every in strides:
                if every == 1 and name not in every_frame:
                    continue
                tracks, wall, err = run_tracks(item, det, every)
                n = len(item["boxes"][0])
                faces = [score_face(tracks, b) for b in item["boxes"]]
                on_face = sum(f.n_tracks for f in faces)
                rows.append(
                    {
                        "clip": item["name"],
                        "kind": item["kind"],
                        "detector": name,
                        "detect_every": every,
                        "coverage": [round(f.coverage, 3) for f in faces],
                        "tracks_per_face": [f.n_tracks for f in faces],
                        "false_tracks": max(0, len(tracks) - on_face),
                        "jitter_centre_pct": [round(f.jitter_centre, 2) for f in faces],
                        "jitter_size_pct": [round(f.jitter_size, 2) for f in faces],
                        "face_pass_s": round(wall, 2),
                        "fps": round(n / wall, 1),
                        "error": err,
                    }
                )
                r = rows[-1]
                print(
                    f"{r['clip']:28s} {name:11s} every {every}: coverage {r['coverage']} tracks "
                    f"{r['tracks_per_face']} false {r['false_tracks']} jitter {r['jitter_centre_pct']}/"
                    f"{r['jitter_size_pct']} {r['fps']} fps",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


def smoothing(items: list[dict], det, strides: list[int]) -> list[dict]:
    """Crop jitter of the default detector with the tracker's box smoothing off and on."""
    from mtdistill.data.scenes import score_face

    rows = []
    for item in items:
        if item["kind"] == "real" or not item["name"].startswith(("small_sadtalker", "sway30", "two_speakers")):
            continue
        for every in strides:
            for label, opts in (
                ("off", {"smooth": 1, "smooth_detections": 1}),
                ("5 frames (before)", {"smooth_detections": 1}),
                ("3 detections + 5 frames (now)", {}),
            ):
                tracks, _, _ = run_tracks(item, det, every, **opts)
                f = score_face(tracks, item["boxes"][0])
                rows.append(
                    {
                        "clip": item["name"],
                        "detect_every": every,
                        "smoothing": label,
                        "jitter_centre_pct": round(f.jitter_centre, 2),
                        "jitter_size_pct": round(f.jitter_size, 2),
                    }
                )
    return rows


def sync_recovery(real: Path, out: Path, detectors: dict, n_seeds: int = 2) -> list[dict]:
    """Offset found by the trained tiny model (stride 5) on synthetic small-face clips, per detector."""
    from mtdistill.core.errors import UserError
    from mtdistill.data import scenes
    from mtdistill.inference.sync import sync_video
    from mtdistill.models import VocaLiST

    if not TRAINED_TINY.is_file():
        print(f"# no {TRAINED_TINY}: sync recovery skipped", file=sys.stderr)
        return []
    model = VocaLiST.from_checkpoint(TRAINED_TINY)
    cases = [(701, 4), (702, -6), (703, 7), (704, -3)][:n_seeds]
    rows = []
    for w in (32, 48, 64):
        for seed, off in cases:
            path = out / f"sync_{w}_{seed}_{off}.mp4"
            if not path.is_file():
                scenes.synthetic_small_scene(path, seed, off, w, real / CLIPS[BACKGROUND])
            for name, det in detectors.items():
                try:
                    res = sync_video(path, model, stride=5, detector=det)
                    best = max(res.tracks, key=lambda t: t.n_windows)
                    found = best.offset_frames
                except UserError:
                    found = None
                rows.append(
                    {
                        "face_width": w,
                        "seed": seed,
                        "true": off,
                        "detector": name,
                        "found": found,
                        "ok": found is not None and abs(found - off) <= 1,
                    }
                )
                print(f"sync {w}px seed {seed} true {off:+d} {name}: {found}", file=sys.stderr, flush=True)
    return rows


def face_pass_speed(real: Path, detectors: dict, repeats: int = 2) -> list[dict]:
    """`track_faces` at detect_every=5 on the 4 real clips: best of `repeats` (the machine is shared)."""
    from mtdistill.media.frames import probe

    rows = []
    for key, clip in CLIPS.items():
        n = probe(real / clip).n_frames
        for name, det in detectors.items():
            best = min(run_tracks({"path": real / clip}, det, 5)[1] for _ in range(repeats))
            rows.append(
                {"clip": key, "detector": name, "frames": n, "face_pass_s": round(best, 2), "fps": round(n / best, 1)}
            )
            print(f"speed {key} {name}: {best:.2f} s", file=sys.stderr, flush=True)
    return rows


def summary(rows: list[dict], sync_rows: list[dict], speed: list[dict], smooth_rows: list[dict]) -> str:
    """Markdown tables."""
    dets = list(dict.fromkeys(r["detector"] for r in rows))
    lines = [
        "| clip | every | " + " | ".join(f"{d}: coverage / tracks / false / jitter c,s %" for d in dets) + " |",
        "|---|---|" + "---|" * len(dets),
    ]
    keys = list(dict.fromkeys((r["clip"], r["detect_every"]) for r in rows))
    for clip, every in keys:
        cells = []
        for d in dets:
            r = next((r for r in rows if r["clip"] == clip and r["detect_every"] == every and r["detector"] == d), None)
            if r is None:
                cells.append("")
                continue
            cov = " + ".join(f"{100 * c:.0f}" for c in r["coverage"])
            trk = "+".join(str(t) for t in r["tracks_per_face"])
            jit = " + ".join(
                f"{c:.1f},{s:.1f}" for c, s in zip(r["jitter_centre_pct"], r["jitter_size_pct"], strict=True)
            )
            cells.append(f"{cov} % / {trk} / {r['false_tracks']} / {jit}")
        lines.append(f"| {clip} | {every} | " + " | ".join(cells) + " |")
    if speed:
        lines += [
            "",
            "| face pass at detect_every 5 (s, best of 2) | " + " | ".join(dets) + " |",
            "|---|" + "---|" * len(dets),
        ]
        for clip in dict.fromkeys(r["clip"] for r in speed):
            cells = [
                next(
                    (f"{r['face_pass_s']} ({r['fps']} fps)" for r in speed if r["clip"] == clip and r["detector"] == d),
                    "",
                )
                for d in dets
            ]
            lines.append(f"| {clip} | " + " | ".join(cells) + " |")
    if sync_rows:
        lines += [
            "",
            "| sync, trained tiny model, stride 5: offsets within 1 frame | " + " | ".join(dets) + " |",
            "|---|" + "---|" * len(dets),
        ]
        for w in dict.fromkeys(r["face_width"] for r in sync_rows):
            cells = []
            for d in dets:
                rr = [r for r in sync_rows if r["face_width"] == w and r["detector"] == d]
                cells.append(f"{sum(r['ok'] for r in rr)}/{len(rr)}" if rr else "")
            lines.append(f"| synthetic face {w} px | " + " | ".join(cells) + " |")
    if smooth_rows:
        labels = list(dict.fromkeys(r["smoothing"] for r in smooth_rows))
        lines += [
            "",
            "| crop jitter, default detector (centre, side; % of crop side) | " + " | ".join(labels) + " |",
            "|---|" + "---|" * len(labels),
        ]
        for clip, every in dict.fromkeys((r["clip"], r["detect_every"]) for r in smooth_rows):
            cells = [
                next(
                    f"{r['jitter_centre_pct']}, {r['jitter_size_pct']}"
                    for r in smooth_rows
                    if r["clip"] == clip and r["detect_every"] == every and r["smoothing"] == label
                )
                for label in labels
            ]
            lines.append(f"| {clip}, every {every} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--realvideos", type=Path, default=REALVIDEOS)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench_faces")
    ap.add_argument("--detectors", default="retinaface,haar,mtcnn")
    ap.add_argument("--strides", default="5,1", help="detect_every values (default 5,1)")
    ap.add_argument("--every-frame", default="retinaface", help="detectors also measured at detect_every 1")
    ap.add_argument("--sync-seeds", type=int, default=2, help="synthetic clips per face size for sync (<= 4)")
    ap.add_argument("--only", default=None, help="comma-separated clip-name prefixes to measure")
    ap.add_argument("--no-sync", action="store_true")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--no-smoothing", action="store_true")
    ap.add_argument("--smoothing-only", action="store_true", help="only the crop-jitter comparison")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not all((args.realvideos / c).is_file() for c in CLIPS.values()):
        print(f"# {args.realvideos}: the 4 real clips are not there; nothing measured")
        return 0
    items = build_set(args.realvideos, args.out, args.only)
    detectors = {s.split(":")[-1]: d for s in args.detectors.split(",") if (d := load_detector(s)) is not None}
    strides = [int(s) for s in args.strides.split(",")]
    rows = [] if args.smoothing_only else measure(items, detectors, strides, set(args.every_frame.split(",")))
    if args.smoothing_only:
        args.no_speed = args.no_sync = True
    speed = [] if args.no_speed else face_pass_speed(args.realvideos, detectors)
    sync_rows = [] if args.no_sync else sync_recovery(args.realvideos, args.out, detectors, args.sync_seeds)
    default = next(iter(detectors.values()))
    smooth_rows = [] if args.no_smoothing else smoothing(items, default, strides)
    print(summary(rows, sync_rows, speed, smooth_rows))
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "speed": speed, "sync": sync_rows, "smoothing": smooth_rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Sub-frame offsets, offsets over time and their errors with the committed trained tiny model (run by hand;
results in RESULTS.md, "Sub-frame offsets and offsets over time").

    python benchmarks/bench_sync_time.py subframe [--strides 5,2,1] [--seeds 700,900,1100] [--leads -60,-20,20,60,100]
    python benchmarks/bench_sync_time.py step     [--stride 2] [--seeds 11,12]
    python benchmarks/bench_sync_time.py drift    [--stride 2] [--drifts 0.004,-0.003]

subframe: synthetic 4 s clips whose audio leads by each lead (ms, sample-precise), scored at each stride; error of
the whole frame, of the curve interpolation (route b, `subframe_offset`) and of audio shifted by 10-30 ms (route a,
`refine_offset`), with interval coverage and the cost of each route. step: 12 s clips whose sound is cut at 6 s
from +120 to -80 ms (same pictures). drift: 20 s clips whose sound runs (1 + drift) times as fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mtdistill.core.timing import SAMPLE_RATE
from mtdistill.data.synthetic import make_talking_video, talking_clip, write_mp4
from mtdistill.inference.scoring import PairScorer, n_audio_windows, score_chunk
from mtdistill.inference.segments import estimate_drift, find_segments
from mtdistill.inference.subframe import refine_offset, subframe_offset
from mtdistill.media.audio import load_audio
from mtdistill.media.tracking import mouth_crops
from mtdistill.models import VocaLiST
from mtdistill.models.presets import frames_to_input, windows_to_video

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _track_rows import track_rows  # noqa: E402

TRAINED_TINY = Path(__file__).resolve().parents[1] / "tests" / "data" / "trained_tiny.safetensors"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def bench_subframe(args, model, work: Path) -> dict:
    scorer = PairScorer(model)
    strides = _ints(args.strides)
    res: dict[int, list[dict]] = {s: [] for s in strides}
    cost = {s: {"score_s": 0.0, "route_b_s": 0.0, "route_a_s": 0.0} for s in strides}
    for seed in _ints(args.seeds):
        for lead in [float(x) for x in args.leads.split(",")]:
            path = work / f"lead_{lead:+.0f}_{seed}.mp4"
            make_talking_video(path, seed=seed + int(lead), duration_s=4.0, offset_ms=lead)
            tc = mouth_crops(path)[0]
            wave = load_audio(path)
            n_audio = n_audio_windows(len(wave))
            frames = frames_to_input(tc.crops, model.preset)
            for stride in strides:
                starts = np.arange(0, tc.track.n_frames - 4, stride) + tc.track.start_frame
                windows = windows_to_video(frames, starts - tc.track.start_frame)
                t0 = time.perf_counter()
                rows, _ = score_chunk(scorer, windows, starts, wave, n_audio)
                t1 = time.perf_counter()
                b = subframe_offset(rows, starts)
                t2 = time.perf_counter()
                a = refine_offset(scorer, scorer.video(windows), starts, wave, n_audio, rows)
                t3 = time.perf_counter()
                c = cost[stride]
                c["score_s"], c["route_b_s"], c["route_a_s"] = (
                    c["score_s"] + t1 - t0,
                    c["route_b_s"] + t2 - t1,
                    c["route_a_s"] + t3 - t2,
                )
                res[stride].append({"lead": lead, "whole": 40.0 * b.offset_frames, "b": b, "a": a})
    out = {}
    for stride, rs in res.items():
        row = {"n": len(rs)}
        for key in ("whole", "b", "a"):
            est = np.array([r[key] if key == "whole" else r[key].offset_ms for r in rs])
            err = est - np.array([r["lead"] for r in rs])
            row[key] = {"mae_ms": round(float(np.abs(err).mean()), 1), "bias_ms": round(float(err.mean()), 1),
                        "max_ms": round(float(np.abs(err).max()), 1)}  # fmt: skip
            if key != "whole":
                row[key]["coverage"] = round(
                    float(np.mean([r[key].low_ms <= r["lead"] <= r[key].high_ms for r in rs])), 2
                )
                row[key]["width_ms"] = round(float(np.mean([r[key].high_ms - r[key].low_ms for r in rs])), 1)
        row["cost_vs_scoring"] = {k: round(v / cost[stride]["score_s"], 3) for k, v in cost[stride].items()}
        out[f"stride_{stride}"] = row
    return out


def bench_step(args, model, work: Path) -> dict:
    out = []
    for seed in _ints(args.seeds):
        before, after = talking_clip(seed, 12.0, offset_ms=120.0), talking_clip(seed, 12.0, offset_ms=-80.0)
        cut = 6 * SAMPLE_RATE
        path = work / f"step_{seed}.mp4"
        write_mp4(path, before.frames, np.concatenate([before.audio[:cut], after.audio[cut:]]))
        starts, rows = track_rows(path, model, stride=args.stride)
        segs = find_segments(starts, rows)
        out.append({
            "seed": seed, "n_segments": len(segs), "segments": [s.to_dict() for s in segs],
            "boundary_error_s": round(segs[0].end_s - 6.0, 2) if len(segs) == 2 else None,
            "offset_errors_ms": [round(segs[0].offset_ms - 120.0, 1), round(segs[-1].offset_ms + 80.0, 1)],
        })  # fmt: skip
    return {"stride": args.stride, "clips": out}


def bench_drift(args, model, work: Path) -> dict:
    out = []
    for i, drift in enumerate(float(x) for x in args.drifts.split(",")):
        path = work / f"drift_{i}.mp4"
        make_talking_video(path, seed=21 + i, duration_s=20.0, offset_ms=-40.0 if drift > 0 else 40.0, drift=drift)
        starts, rows = track_rows(path, model, stride=args.stride)
        segs = find_segments(starts, rows)
        est = estimate_drift(starts, rows, segs)
        truth = drift / (1 + drift) * 60_000.0
        out.append({
            "drift": drift, "truth_ms_per_min": round(truth, 1), "n_segments": len(segs),
            "estimate": None if est is None else est.to_dict(),
            "relative_error": None if est is None else round((est.ms_per_min - truth) / abs(truth), 3),
        })  # fmt: skip
    return {"stride": args.stride, "clips": out}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("subframe")
    s.add_argument("--strides", default="5,2,1")
    s.add_argument("--seeds", default="700,900,1100")
    s.add_argument("--leads", default="-60,-20,20,60,100")
    s = sub.add_parser("step")
    s.add_argument("--stride", type=int, default=2)
    s.add_argument("--seeds", default="11,12")
    s = sub.add_parser("drift")
    s.add_argument("--stride", type=int, default=2)
    s.add_argument("--drifts", default="0.004,-0.003")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = VocaLiST.from_checkpoint(TRAINED_TINY)
    with tempfile.TemporaryDirectory() as tmp:
        fn = {"subframe": bench_subframe, "step": bench_step, "drift": bench_drift}[args.what]
        print(json.dumps(fn(args, model, Path(tmp)), indent=1))


if __name__ == "__main__":
    main()

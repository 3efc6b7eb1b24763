"""Sync tool speed and memory, ONNX / int8 latency and agreement (run by hand; results in RESULTS.md).

    python benchmarks/bench_inference.py rtf        [--realvideos DIR] [--checkpoint CKPT] [--stride 5] [--bf16]
    python benchmarks/bench_inference.py latency    [--checkpoint CKPT]
    python benchmarks/bench_inference.py int8       [--checkpoint CKPT] [--clips 6]
    python benchmarks/bench_inference.py rss        [--minutes 10] [--stride 5]
    python benchmarks/bench_inference.py calibrate  --checkpoint CKPT [--clips 12]
    python benchmarks/bench_inference.py stride     --checkpoint CKPT [--clips 6]
    python benchmarks/bench_inference.py falseconf  [--checkpoint CKPT] [--clips 6] [--seeds 3] [--scaled-clips 3]

Without --checkpoint the student / teacher have random weights: speed and memory do not depend on the weights,
accuracy does (the int8 run then reports agreement of the chosen offsets between fp32 and int8 instead).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REALVIDEOS = Path(__file__).resolve().parents[2] / "shared" / "realvideos"


def _model(args, which: str = "student"):
    from mtdistill.models import VocaLiST

    if getattr(args, "checkpoint", None):
        return VocaLiST.from_checkpoint(args.checkpoint, preset=args.preset)
    torch.manual_seed(0)
    return getattr(VocaLiST, which)(preset="mtd").eval()


def bench_rtf(args) -> dict:
    """End-to-end sync (decode + faces + crops + model) real-time factor on the real clips."""
    from mtdistill.inference.sync import sync_video

    model = _model(args)
    rows = []
    for clip in sorted(Path(args.realvideos).glob("*.mp4")):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            res = sync_video(clip, model, stride=args.stride, bf16=args.bf16)
        except Exception as exc:  # noqa: BLE001 - report and go on
            rows.append({"clip": clip.name, "error": str(exc)})
            continue
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rows.append(
            {
                "clip": clip.name,
                "duration_s": round(res.duration_s, 2),
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu, 2),
                "rtf": round(wall / res.duration_s, 3),
                "faces_s": res.timing.get("faces_s"),
                "crops_and_model_s": res.timing.get("crops_and_model_s"),
                "tracks": len(res.tracks),
                "windows": sum(t.n_windows for t in res.tracks),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    ok = [r for r in rows if "rtf" in r]
    total = sum(r["wall_s"] for r in ok) / max(sum(r["duration_s"] for r in ok), 1e-9)
    return {"stride": args.stride, "bf16": args.bf16, "clips": rows, "rtf_overall": round(total, 3)}


def _time(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_latency(args) -> dict:
    """One window's 31 candidates (batch 31, full model) and the factorised cost per window, per backend."""
    from mtdistill.inference.onnx_export import export_onnx, int8_path
    from mtdistill.inference.onnx_runtime import load_onnx_model

    g = torch.Generator().manual_seed(0)
    video = torch.rand(31, 15, 48, 96, generator=g) * 255
    mel = torch.rand(31, 1, 80, 16, generator=g) * 8 - 4
    out = {}
    student = _model(args, "student")
    models = {"teacher (torch)": _model(argparse.Namespace(checkpoint=None), "teacher"), "student (torch)": student}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "student.onnx"
        export_onnx(student, path, int8=True)
        models["student (onnx fp32)"] = load_onnx_model(path)
        models["student (onnx int8)"] = load_onnx_model(int8_path(path))
        for name, m in models.items():
            with torch.inference_mode():
                full = _time(lambda m=m: m(video, mel))
                vt = m.encode_video(video[:1])
                at = m.encode_audio(mel)
                fact = _time(
                    lambda m=m, vt=vt, at=at: (
                        m.encode_video(video[:1]),
                        m.encode_audio(mel[:1]),
                        m.backend(vt.expand(-1, 31, -1).contiguous(), at),
                    )
                )
            out[name] = {"full_31_pairs_ms": round(1000 * full, 1), "factorised_per_window_ms": round(1000 * fact, 1)}
            print(name, out[name], flush=True)
    return out


def _synthetic_utterances(n: int, seed0: int = 700):
    """(frames float in the mtd preset, mel, n_samples) of n synthetic in-sync clips through the real pipeline."""
    from mtdistill.audio import load_audio, utterance_mel
    from mtdistill.data.synthetic import make_talking_video
    from mtdistill.models.presets import frames_to_input
    from mtdistill.video import mouth_crops

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            p = Path(tmp) / f"u{i}.mp4"
            make_talking_video(p, seed=seed0 + i, duration_s=3.0, offset_frames=0)
            crops = mouth_crops(p)[0].crops
            wave = load_audio(p)
            out.append((frames_to_input(crops, "mtd"), utterance_mel(wave), len(wave)))
    return out


def bench_int8(args) -> dict:
    """Protocol accuracy (K=5, 15) fp32 vs int8 (matmuls only, and matmuls + convs) on synthetic utterances."""
    from mtdistill.evaluation.protocol import score_utterance
    from mtdistill.inference.onnx_export import QUANT_OP_TYPES, export_onnx, quantize_int8
    from mtdistill.inference.onnx_runtime import load_onnx_model

    model = _model(args)
    utts = _synthetic_utterances(args.clips)
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_onnx(model, path, split=True)
        from mtdistill.inference.onnx_export import split_paths

        variants = {"torch fp32": model, "onnx fp32": load_onnx_model(path)}
        for tag, ops in (("int8 matmul", QUANT_OP_TYPES), ("int8 matmul+conv", (*QUANT_OP_TYPES, "Conv"))):
            q = Path(tmp) / f"{tag.replace(' ', '_').replace('+', '_')}.onnx"
            quantize_int8(path, q, ops)
            for name, part in split_paths(path).items():
                quantize_int8(part, split_paths(q)[name], ops)
            variants[tag] = load_onnx_model(q)
        ref_offsets = None
        for name, m in variants.items():
            accs, offs, logits = [], [], []
            for frames, mel, n in utts:
                s = score_utterance(m, frames, mel, lengths=(5, 15), n_samples=n)
                accs.append(s.accuracy)
                offs.append(np.concatenate([s.offsets[5], s.offsets[15]]))
                logits.append(s.logits.ravel())
            offs_all, logit_all = np.concatenate(offs), np.concatenate(logits)
            if ref_offsets is None:
                ref_offsets, ref_logits = offs_all, logit_all
            res[name] = {
                "acc_k5": round(100 * float(np.mean([a[5] for a in accs])), 2),
                "acc_k15": round(100 * float(np.mean([a[15] for a in accs])), 2),
                "offset_agreement_pct": round(100 * float(np.mean(offs_all == ref_offsets)), 2),
                "max_abs_logit_diff": round(float(np.abs(logit_all - ref_logits).max()), 5),
            }
            print(name, res[name], flush=True)
    return res


# Runs the CLI and prints the process's own peak RSS (VmHWM) to stderr. getrusage(RUSAGE_CHILDREN) is not
# usable here: subprocess starts children with vfork, and exec then records the parent's peak (the rendered
# video, ~1.2 GB for 10 minutes) as the child's ru_maxrss.
_PEAK_WRAPPER = """
import atexit, sys
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            print("PEAK_RSS_KB", line.split()[1], file=sys.stderr)
atexit.register(_peak)
from mtdistill.cli import main
sys.exit(main(sys.argv[1:]))
"""


def bench_rss(args) -> dict:
    """Peak RSS of `mtdistill sync` (student, stride s) on a long synthetic video, in a fresh process."""
    from mtdistill.data.synthetic import make_talking_video

    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "long.mp4"
        t0 = time.perf_counter()
        make_talking_video(clip, seed=1, duration_s=60.0 * args.minutes, offset_frames=0)
        made = time.perf_counter() - t0
        ckpt = _model(args).save_checkpoint(Path(tmp) / "student.safetensors")
        cmd = [sys.executable, "-c", _PEAK_WRAPPER, "sync", str(clip), "--checkpoint", str(ckpt), "--json",
               "--stride", str(args.stride)]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    peak_kb = int(proc.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    data = json.loads(proc.stdout)
    return {
        "minutes": args.minutes,
        "stride": args.stride,
        "make_video_s": round(made, 1),
        "sync_wall_s": round(wall, 1),
        "rtf": round(wall / data["duration_s"], 3),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "windows": data["tracks"][0]["n_windows"] if data["tracks"] else 0,
    }


def bench_calibrate(args) -> dict:
    """Confidence of in-sync / shifted clips versus clips with another clip's audio (no true offset)."""
    from mtdistill.data.synthetic import make_talking_video
    from mtdistill.inference.calibrate import calibrate_min_confidence
    from mtdistill.inference.sync import sync_video

    model = _model(args)
    matched = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.clips):
            k = int(np.random.default_rng(i).integers(-8, 9))
            p = Path(tmp) / f"c{i}.mp4"
            make_talking_video(p, seed=900 + i, duration_s=4.0, offset_frames=k)
            t = sync_video(p, model, stride=1).main_track()
            matched.append({"k": k, "est": t.offset_frames, "conf": round(t.confidence, 3)})
            print(matched[-1], flush=True)
    threshold, swapped = calibrate_min_confidence(model, args.clips)
    ok = [m["conf"] for m in matched if abs(m["est"] - m["k"]) <= 1]
    return {
        "matched": matched,
        "mismatched": [{"conf": round(c, 3)} for c in swapped],
        "max_mismatched_conf": round(max(swapped), 3),
        "suggested_min_confidence": threshold,
        "matched_correct_above": sum(c >= threshold for c in ok),
    }


def bench_stride(args) -> dict:
    """Offset recovery (|est - k| <= 1) and time at stride 1 vs 5 on synthetic clips of known offset."""
    from mtdistill.data.synthetic import make_talking_video
    from mtdistill.inference.sync import sync_video

    model = _model(args)
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        clips = []
        for i in range(args.clips):
            k = int(np.random.default_rng(100 + i).integers(-10, 11))
            for dur in (2.0, 4.0, 8.0):
                p = Path(tmp) / f"s{i}_{dur:g}.mp4"
                make_talking_video(p, seed=1200 + i, duration_s=dur, offset_frames=k)
                clips.append((p, k, dur))
        for stride in (1, 5):
            for dur in (2.0, 4.0, 8.0):
                hits, secs = 0, 0.0
                for p, k, d in clips:
                    if d != dur:
                        continue
                    t0 = time.perf_counter()
                    est = sync_video(p, model, stride=stride).main_track().offset_frames
                    secs += time.perf_counter() - t0
                    hits += abs(est - k) <= 1
                row = {"recovered": f"{hits}/{args.clips}", "mean_s": round(secs / args.clips, 2)}
                out[f"stride {stride}, {dur:g} s"] = row
                print(stride, dur, row, flush=True)
    return out


def _swap_audio(video: Path, audio_from: Path, out: Path) -> Path:
    """``video``'s packets copied with ``audio_from``'s audio re-encoded (AAC) in place of its own."""
    import av

    from mtdistill.inference.fix import _decode_audio, _remux
    from mtdistill.media.decode import open_media

    with open_media(audio_from) as pb:
        a = pb.streams.audio[0]
        sr, layout, audio = a.rate, a.layout.name, _decode_audio(pb, a, audio_from)
    with open_media(video) as inp:
        o = av.open(str(out), mode="w", format="mp4")
        try:
            _remux(inp, o, inp.streams.video[0], inp.streams.audio[0], audio, "aac", sr, layout, video)
        finally:
            o.close()
    return out


def _scaled(checkpoint: str, factor: float):
    from mtdistill.models import VocaLiST

    model = VocaLiST.from_checkpoint(checkpoint)
    with torch.no_grad():
        model.classifier.weight.mul_(factor)
        model.classifier.bias.mul_(factor)
    return model.eval()


def bench_falseconf(args) -> dict:
    """Confident verdicts (p_value <= alpha) where there is no true offset to find, and agreement of scaled
    models: random weights on the real clips, real clips with another real clip's audio, synthetic clips with
    another clip's audio (trained model, stride 5 and 1), and the trained model's classifier scaled by 0.25 / 4."""
    from mtdistill.data.synthetic import make_talking_video, talking_clip, write_mp4
    from mtdistill.inference.significance import DEFAULT_ALPHA
    from mtdistill.inference.sync import sync_video
    from mtdistill.models import VocaLiST

    ckpt = args.checkpoint or str(Path(__file__).resolve().parents[1] / "tests" / "data" / "trained_tiny.safetensors")
    trained = VocaLiST.from_checkpoint(ckpt)
    real = sorted(Path(args.realvideos).glob("*.mp4"))
    groups: dict[str, list[dict]] = {}

    def record(group: str, name: str, res, truth: int | None = None) -> None:
        for t in res.tracks:
            row = {"clip": name, "track": t.track, "offset": t.offset_frames, "p_value": t.p_value,
                   "verdict": t.verdict, "confidence": round(t.confidence, 3)}  # fmt: skip
            if truth is not None:
                row["truth"] = truth
            groups.setdefault(group, []).append(row)
            print(group, json.dumps(row), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            tiny = VocaLiST.tiny(preset="mtd").eval()
            for clip in real:
                record("random tiny, real clips", f"{clip.name} seed {seed}", sync_video(clip, tiny, stride=5))
        torch.manual_seed(0)
        student = VocaLiST.student(preset="mtd").eval()
        for clip in real:
            record("random student, real clips", clip.name, sync_video(clip, student, stride=5))
        for i, clip in enumerate(real):
            other = real[(i + 1) % len(real)]
            swapped = _swap_audio(clip, other, Path(tmp) / f"swap_{i}.mp4")
            record("trained tiny, real clip + other real audio", f"{clip.name} + {other.name}",
                   sync_video(swapped, trained, stride=5))  # fmt: skip
        scaled = {"x0.25": _scaled(ckpt, 0.25), "x4": _scaled(ckpt, 4.0)}
        for i in range(args.clips):
            a, b = talking_clip(2000 + i, 4.0), talking_clip(9000 + i, 4.0)
            sw = Path(tmp) / f"sw{i}.mp4"
            write_mp4(sw, a.frames, b.audio)
            k = int(np.random.default_rng(50 + i).integers(-10, 11))
            kn = Path(tmp) / f"k{i}.mp4"
            make_talking_video(kn, seed=2500 + i, duration_s=4.0, offset_frames=k)
            models = {"x1": trained, **(scaled if i < args.scaled_clips else {})}
            for tag, m in models.items():
                record(f"trained tiny {tag}, synthetic + other audio, stride 5", f"sw{i}", sync_video(sw, m, stride=5))
                record(f"trained tiny {tag}, synthetic known offset, stride 5", f"k{i}", sync_video(kn, m, stride=5), k)
            record("trained tiny, synthetic + other audio, stride 1", f"sw{i}", sync_video(sw, trained, stride=1))
    out = {}
    for group, rows in groups.items():
        confident = [r for r in rows if r["p_value"] is not None and r["p_value"] <= DEFAULT_ALPHA]
        summary = {"tracks": len(rows), "confident": len(confident),
                   "min_p": min((r["p_value"] for r in rows if r["p_value"] is not None), default=None)}  # fmt: skip
        if "known" in group:
            summary["confident_and_right"] = sum(abs(r["offset"] - r["truth"]) <= 1 for r in confident)
        out[group] = summary
    ref = {(r["clip"]): r for g, rows in groups.items() if g.startswith("trained tiny x1") for r in rows}
    for tag in ("x0.25", "x4"):
        rows = [r for g, rs in groups.items() if g.startswith(f"trained tiny {tag},") for r in rs]
        same = sum((r["verdict"], r["p_value"]) == (ref[r["clip"]]["verdict"], ref[r["clip"]]["p_value"]) for r in rows)
        out[f"scaled {tag}: same verdict and p_value as x1"] = f"{same}/{len(rows)}"
    return {"alpha": DEFAULT_ALPHA, "summary": out, "rows": groups}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("rtf", "latency", "int8", "rss", "calibrate", "stride", "falseconf"))
    p.add_argument("--realvideos", default=str(REALVIDEOS))
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--preset", default=None)
    p.add_argument("--stride", type=int, default=5)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clips", type=int, default=6)
    p.add_argument("--bf16", action="store_true", help="rtf: bfloat16 autocast (sync --bf16)")
    p.add_argument("--seeds", type=int, default=3, help="falseconf: random-weight tiny models per real clip")
    p.add_argument("--scaled-clips", type=int, default=3, help="falseconf: synthetic clips also run scaled")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args()
    benches = {"rtf": bench_rtf, "latency": bench_latency, "int8": bench_int8, "rss": bench_rss,
               "calibrate": bench_calibrate, "stride": bench_stride, "falseconf": bench_falseconf}  # fmt: skip
    result = benches[args.what](args)
    result = {"what": args.what, "torch_threads": torch.get_num_threads(), **result}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

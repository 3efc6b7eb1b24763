"""The README's main job: synthetic corpus -> teacher -> distilled students -> protocol eval -> report -> sync."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mtdistill.core.errors import UserError

HELP = "run the whole pipeline on a synthetic corpus (CPU, minutes): synth, prepare, train, distill, evaluate, sync"


@dataclass(frozen=True)
class DemoScale:
    """How big each step is; ``fast`` is for CI (about 3 minutes on 2 cores)."""

    speakers: int
    utterances: int  # per speaker
    duration: tuple[float, float]
    teacher_epochs: int
    student_epochs: int
    teacher_samples_per_epoch: int  # one validation (and early-stop check) per epoch
    samples_per_epoch: int  # students
    val_samples: int
    test_utterances: int
    sync_offset: int  # frames; positive = audio leads video


# FULL: the teacher (batch 16, configs/demo_teacher.yaml) is validated every 50 steps and stops at the first
# validation with weighted F1 >= 0.75; warm-started (WARM_START) that takes a few hundred steps, from scratch it
# may need the whole 2,000-step budget. Each student gets 150 steps of 32 pairs, in which MTD gets it off the BCE
# plateau and BCE alone does not (measured runs in README)
FULL = DemoScale(8, 12, (3.0, 4.0), 40, 3, 800, 1600, 128, 24, 4)
FAST = DemoScale(4, 6, (3.0, 3.0), 2, 1, 48, 96, 32, 8, 4)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="folder for the corpus, store, runs and report")
    parser.add_argument("--fast", action="store_true", help="a smaller, quicker run (CI): about 3 minutes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes for synth / prepare")
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="train the teacher from random weights instead of warm-starting its front ends from "
        f"{WARM_START} (leaving the BCE plateau then takes anything from 100 to over 2,000 steps)",
    )


WARM_START = "tests/data/trained_tiny.safetensors"
"""A d=32 VocaLiST trained on the synthetic corpus (configs/synthetic_tiny.yaml): its front-end convs up to width
16 have the demo teacher's shapes, and copying them (``model.init_from``) takes the teacher off the BCE plateau
within ~50 steps, where from random weights it left it anywhere from under 100 to over 2,000 steps
(docs/training.md). The students, whose comparison the demo is about, always start from random weights."""


def _configs_dir() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "configs" / "demo_teacher.yaml").is_file():
            return parent / "configs"
    raise UserError("configs/demo_*.yaml not found: run the demo from a source checkout (pip install -e .)")


def _protocol_accuracy(run_dir: Path, k: int = 5) -> float:
    """Accuracy (%) at K from the run's eval/results.json (-1 when missing)."""
    path = run_dir / "eval" / "results.json"
    if not path.is_file():
        return -1.0
    return float(json.loads(path.read_text())["accuracy"].get(str(k), -1.0))


def _step(title: str) -> float:
    print(f"\n== {title}", file=sys.stderr, flush=True)
    return time.perf_counter()


def _recipe(name: str, out: Path, scale: DemoScale, seed: int, epochs: int, warm_start: bool = True) -> dict:
    from mtdistill.training.config import load_config

    samples = scale.teacher_samples_per_epoch if name == "demo_teacher" else scale.samples_per_epoch
    overrides = [
        f"output.dir={out / 'runs'}",
        f"data.store={out / 'store'}",
        f"data.samples_per_epoch={samples}",
        f"data.val_samples={scale.val_samples}",
        f"trainer.epochs={epochs}",
        f"seed={seed}",
    ]
    if name == "demo_teacher" and warm_start:
        warm = _configs_dir().parent / WARM_START
        if not warm.is_file():
            raise UserError(f"{warm} is missing from this checkout; restore it with git or use --from-scratch")
        overrides.append(f"model.init_from={warm}")
    cfg = load_config(_configs_dir() / f"{name}.yaml", overrides)
    if cfg.get("kind") == "distill":
        cfg = load_config(
            _configs_dir() / f"{name}.yaml",
            [*overrides, f"teacher.checkpoint={out / 'runs' / 'demo_teacher' / 'model_best.safetensors'}"],
        )
    return cfg


def run(args: argparse.Namespace) -> int:
    from mtdistill.data.prepare import prepare
    from mtdistill.data.synthetic import make_talking_video, synth_corpus
    from mtdistill.evaluation.report import build_report
    from mtdistill.evaluation.store_eval import evaluate_to_folder
    from mtdistill.inference.calibrate import CALIBRATION_MARGIN, calibrate_min_confidence
    from mtdistill.inference.sync import sync_video
    from mtdistill.models import VocaLiST
    from mtdistill.training.run import run_recipe

    scale = FAST if args.fast else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    t = _step("1/6 synthesise a talking-mouth corpus (real H.264 + AAC .mp4 files)")
    videos = out / "videos"
    if not (videos / "filelists" / "test.txt").is_file():
        synth_corpus(
            videos, n_speakers=scale.speakers, n_utterances=scale.utterances, seed=args.seed,
            duration=scale.duration, workers=args.workers,
        )  # fmt: skip
    timings["synth"] = time.perf_counter() - t

    t = _step("2/6 prepare: detect and track faces, crop mouths, pack a sharded store")
    prepare(videos, out / "store", workers=args.workers)
    timings["prepare"] = time.perf_counter() - t

    runs: dict[str, Path] = {}
    for name, epochs, title in (
        ("demo_teacher", scale.teacher_epochs, "3/6 train the teacher (VocaLiST family, BCE, warm-started front ends)"),
        ("demo_mtd", scale.student_epochs, "4/6 distil the student with MTD (UW-25D)"),
        ("demo_bce", scale.student_epochs, "4/6 train the same student with BCE only (baseline)"),
    ):
        t = _step(title)
        cfg = _recipe(name, out, scale, args.seed, epochs, warm_start=not args.from_scratch)
        run_recipe(cfg)
        runs[name] = Path(cfg["output"]["dir"]) / cfg["name"]
        timings[name] = time.perf_counter() - t

    t = _step("5/6 evaluate with the paper's protocol (31 candidates, +-1 frame, K = 5..15) and report")
    for run_dir in runs.values():
        evaluate_to_folder(run_dir, out / "store", split="test", max_utterances=scale.test_utterances)
    report = build_report(list(runs.values()), out / "report")
    timings["evaluate+report"] = time.perf_counter() - t
    # sync with the better student by the protocol (K=5), as a practitioner would deploy it
    acc = {name: _protocol_accuracy(runs[name]) for name in ("demo_mtd", "demo_bce")}
    sync_run = max(acc, key=lambda name: acc[name])

    t = _step(f"6/6 sync: a new synthetic video whose audio leads the video by {scale.sync_offset} frames")
    clip = out / f"sync_check_offset{scale.sync_offset:+d}.mp4"
    make_talking_video(clip, seed=args.seed + 999, duration_s=8.0, offset_frames=scale.sync_offset)
    student = VocaLiST.from_checkpoint(runs[sync_run] / "model_best.safetensors")
    # the verdict threshold is a logit margin, whose scale depends on the training: calibrate it for this model
    min_conf, swapped = calibrate_min_confidence(student, clips=4, seed=args.seed)
    result = sync_video(clip, student, min_confidence=min_conf)
    timings["sync"] = time.perf_counter() - t
    if not result.tracks:
        raise UserError(f"sync found no face track in {clip}")
    track = result.tracks[0]
    # a flat score curve (verdict "undetermined") can land near the truth by chance: that is no recovery
    recovered = abs(track.offset_frames - scale.sync_offset) <= 1 and track.verdict != "undetermined"

    table = (out / "report" / "table1.md").read_text() if (out / "report" / "table1.md").is_file() else ""
    print("\n" + table.strip())
    print(
        f"\nfigures and tables: {out / 'report'}  ({', '.join(sorted(p.name for p in (out / 'report').glob('*.png')))})"
    )
    print(
        f"sync with {sync_run} (protocol accuracy K=5: {acc[sync_run]:.1f} %) on {clip.name}: "
        f"offset {track.offset_frames:+d} frames ({track.offset_ms:+.0f} ms), "
        f"confidence {track.confidence:.2f} (threshold {min_conf:.2f}: {CALIBRATION_MARGIN:g} x the highest "
        f"of {len(swapped)} swapped-audio clips), verdict {track.verdict}; true offset {scale.sync_offset:+d} -> "
        f"{'RECOVERED' if recovered else 'NOT recovered'} (within +-1 frame and a confident verdict)"
    )
    total = time.perf_counter() - t_start
    summary = {
        "runs": {k: str(v) for k, v in runs.items()},
        "report": {k: str(v) for k, v in report.items()} if isinstance(report, dict) else str(report),
        "sync": {"model": sync_run, "video": str(clip), "true_offset": scale.sync_offset,
                 "offset_frames": track.offset_frames, "confidence": track.confidence, "min_confidence": min_conf,
                 "swapped_audio_confidences": swapped, "verdict": track.verdict,
                 "recovered": recovered},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "total_s": round(total, 1),
    }  # fmt: skip
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"total {total / 60:.1f} min; summary in {out / 'demo_summary.json'}")
    return 0

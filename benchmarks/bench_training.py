"""Distillation step throughput: VocaLiST teacher (80.1 M) -> MTDVocaLiST student (13.3 M), MTD UW-25D loss.

Run by hand (never in tests):
    python benchmarks/bench_training.py --batch 32 --steps 3
    python benchmarks/bench_training.py --batch 8 --steps 2 --json out.json

Compares, per training step on random inputs of the real shapes:
  naive      the teacher runs in fp32 with autograd on (parameters requiring grad) and capture=True,
             as a straightforward port does; student forward + backward + Adam step;
  optimized  the trainer's path: teacher frozen (requires_grad False) under torch.inference_mode,
             capture=True; same student step (this is what SyncLightningModule does, plus Lightning overhead);
  + channels_last   the optimized step with both models' Conv3d/Conv2d inputs in channels_last(_3d) layout.
Every variant computes the same numbers (checked: identical loss on the same inputs and weights).
Also prints where the time of an optimized step goes: teacher front end (conv prenets), teacher transformers,
student forward, loss, student backward, optimizer step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable

import torch

from mtdistill.distill import build_loss
from mtdistill.models import VocaLiST


def timed(fn: Callable[[], object], steps: int, warmup: int = 1) -> tuple[float, object]:
    out = None
    for _ in range(warmup):
        out = fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        out = fn()
    return (time.perf_counter() - t0) / steps, out


def to_channels_last(model: torch.nn.Module, back: bool = False) -> None:
    """Conv weights in channels_last (2-D) / channels_last_3d (3-D) layout, or back to contiguous."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
            fmt = torch.channels_last if isinstance(module, torch.nn.Conv2d) else torch.channels_last_3d
            w = module.weight
            w.data = w.data.contiguous() if back else w.data.contiguous(memory_format=fmt)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after 1 warm-up step)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    teacher, student = VocaLiST.teacher(), VocaLiST.student()
    loss = build_loss("mtd", weighting="uw", n_weights=25)
    opt = torch.optim.Adam([{"params": student.parameters()}, {"params": loss.parameters()}], lr=5e-5)
    b = args.batch
    video = torch.rand(b, 15, 48, 96) * 255
    mel = torch.rand(b, 1, 80, 16) * 8 - 4
    labels = torch.randint(0, 2, (b,)).float()

    def student_step(teacher_out: object, v: torch.Tensor, m: torch.Tensor) -> float:
        opt.zero_grad(set_to_none=True)
        total = loss(student(v, m, capture=True), teacher_out, labels)
        total.backward()
        opt.step()
        return float(total.detach())

    def naive() -> float:
        teacher.eval().requires_grad_(True)
        t_out = teacher(video, mel, capture=True)  # autograd graph of 80 M parameters built, then dropped
        return student_step(t_out, video, mel)

    def optimized(v: torch.Tensor = video, m: torch.Tensor = mel) -> float:
        teacher.eval().requires_grad_(False)
        with torch.inference_mode():
            t_out = teacher(v, m, capture=True)
        return student_step(t_out, v, m)

    results: dict[str, object] = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPU, torch {torch.__version__}, threads {args.threads}",
        "batch": b,
        "steps": args.steps,
        "load_avg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    # the optimized teacher pass computes exactly the naive one's numbers (autograd only adds a graph)
    teacher.requires_grad_(True)
    grad_out = teacher(video[:2], mel[:2], capture=True)
    with torch.inference_mode():
        inf_out = teacher(video[:2], mel[:2], capture=True)
    results["same_teacher_output"] = bool(
        torch.equal(grad_out.logits.detach(), inf_out.logits)
        and all(
            torch.allclose(x.detach(), y, rtol=0.0, atol=0.0, equal_nan=True)  # bitwise; -inf masks compare equal
            for block in inf_out.attention_logits
            for x, y in zip(grad_out.attention_logits[block], inf_out.attention_logits[block], strict=True)
        )
    )
    del grad_out, inf_out

    for name, fn in (("naive", naive), ("optimized", optimized)):
        sec, _ = timed(fn, args.steps)
        results[name] = {"s_per_step": sec, "samples_per_s": b / sec}
        print(f"{name:>24}: {sec:7.3f} s/step  {b / sec:7.2f} samples/s", file=sys.stderr)

    to_channels_last(teacher)
    to_channels_last(student)
    sec, _ = timed(optimized, args.steps)
    results["optimized+channels_last"] = {"s_per_step": sec, "samples_per_s": b / sec}
    print(f"{'optimized+channels_last':>24}: {sec:7.3f} s/step  {b / sec:7.2f} samples/s", file=sys.stderr)
    to_channels_last(teacher, back=True)
    to_channels_last(student, back=True)

    # where the time goes in one optimized step
    parts: dict[str, float] = {}

    def mark(name: str, t0: float) -> float:
        t1 = time.perf_counter()
        parts[name] = parts.get(name, 0.0) + t1 - t0
        return t1

    for i in range(args.steps + 1):
        if i == 1:
            parts.clear()  # the first round is warm-up
        t = time.perf_counter()
        with torch.inference_mode():
            vt, at = teacher.encode_video(video), teacher.encode_audio(mel)
            t = mark("teacher front end (conv prenets)", t)
            t_out = teacher.backend(vt, at, capture=True)
            t = mark("teacher transformers (capture)", t)
        opt.zero_grad(set_to_none=True)
        s_out = student(video, mel, capture=True)
        t = mark("student forward (capture)", t)
        total = loss(s_out, t_out, labels)
        t = mark("MTD loss (25 terms)", t)
        total.backward()
        t = mark("student backward", t)
        opt.step()
        mark("Adam step", t)
    whole = sum(parts.values())
    results["profile_s_per_step"] = {k: v / args.steps for k, v in parts.items()}
    for k, v in parts.items():
        print(f"{k:>34}: {v / args.steps:7.3f} s  ({100 * v / whole:4.1f} %)", file=sys.stderr)
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Speed of the MulT teacher and the video-only students at MOSEI size (run by hand, never in tests).

    python benchmarks/bench_mult.py [--batch 1 --repeats 10 --threads 2 --train-batch 8]

Prints a Markdown table: parameters, forward latency (median after warm-up) and one distillation training step
(student forward+backward with the frozen teacher's capture) for EDAM-S and CRD on attention maps.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from mtdistill.distill import build_loss
from mtdistill.models.mult.students import CONFIGURATIONS, student_for
from mtdistill.models.mult.teacher import MulT

LENGTHS, DIMS = (50, 500, 500), (300, 74, 35)


def batch_of(b: int) -> dict[str, torch.Tensor]:
    return {
        "text": torch.randn(b, LENGTHS[0], DIMS[0]),
        "audio": torch.randn(b, LENGTHS[1], DIMS[1]),
        "vision": torch.randn(b, LENGTHS[2], DIMS[2]),
        "index": torch.arange(b),
        "class7": torch.randint(0, 7, (b,)),
    }


def median_ms(fn, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--train-batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = MulT.seed_teacher().eval()
    models = {
        "MulT repo default (d=30, 5 layers, regression)": MulT().eval(),
        "Teacher: complete, seed setting (d=40, 4 layers, 8 heads, k=3)": teacher,
        "Teacher: video branch": MulT.seed_teacher(mode="v").eval(),
        "Student-3, configuration 5, EDAM-S lengths": student_for(5, teacher).eval(),
        "Student-9, configuration 1": student_for(1, teacher).eval(),
    }
    x = batch_of(args.batch)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"threads {args.threads}, load {os.getloadavg()[0]:.1f}; MOSEI lengths {LENGTHS}"
    )
    print(f"\n| model | params | forward ms (batch {args.batch}) |\n|---|---|---|")
    with torch.inference_mode():
        for name, m in models.items():
            ms = median_ms(lambda m=m: m.forward_batch(x), 2, args.repeats)
            print(f"| {name} | {m.num_parameters():,} | {ms:.1f} |")

    xb = batch_of(args.train_batch)
    print(f"\n| distillation step (configuration 5) | ms per step (batch {args.train_batch}) |\n|---|---|")
    pairs = [list(p) for p in CONFIGURATIONS[5].pairs]
    for name, loss in (
        ("student alone (mult_ce)", build_loss("mult_ce")),
        ("EDAM-S, all layers", build_loss("edam_s", pairs=pairs)),
        ("CRD on attention maps", build_loss("crd", level="attention", n_data=1000, pairs=pairs, nce_k=256)),
    ):
        student = student_for(5, teacher)
        with torch.no_grad():
            t_out = teacher.forward_batch(xb, capture=loss.capture_names("teacher")) if loss.needs_teacher else None
            loss.setup(student.forward_batch(xb, capture=loss.capture_names("student")), t_out)
        opt = torch.optim.Adam(list(student.parameters()) + list(loss.parameters()), lr=1e-3)

        def step(student=student, loss=loss, opt=opt) -> None:
            with torch.no_grad():
                t = teacher.forward_batch(xb, capture=loss.capture_names("teacher")) if loss.needs_teacher else None
            opt.zero_grad()
            s_cap = loss.capture_names("student") if loss.needs_capture else False
            loss(student.forward_batch(xb, capture=s_cap), t, xb["class7"], xb["index"]).backward()
            opt.step()

        print(f"| {name} | {median_ms(step, 1, max(2, args.repeats // 3)):.0f} |")


if __name__ == "__main__":
    main()

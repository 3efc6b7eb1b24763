"""Forward latency of the VocaLiST teacher and the MTDVocaLiST student (fast path vs capture path).

    python benchmarks/bench_core.py [--device cpu|cuda] [--repeats 10] [--threads 2]

Prints a Markdown table (median ms per forward and the teacher/student ratio).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from mtdistill.models import VocaLiST


def time_forward(model: VocaLiST, batch: int, capture: bool, device: str, repeats: int) -> float:
    video = torch.rand(batch, 15, 48, 96, device=device) * 255
    mel = torch.rand(batch, 1, 80, 16, device=device) * 8 - 4
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(video, mel, capture=capture)
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= 2:  # warm-up
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = {
        "teacher": VocaLiST.teacher().eval().to(args.device),
        "student": VocaLiST.student().eval().to(args.device),
    }
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"device {args.device}, threads {torch.get_num_threads()}"
    )
    print("| batch | path | teacher ms | student ms | teacher/student |")
    print("|---|---|---|---|---|")
    for batch in (1, 31):
        for capture in (False, True):
            t = time_forward(models["teacher"], batch, capture, args.device, args.repeats)
            s = time_forward(models["student"], batch, capture, args.device, args.repeats)
            print(f"| {batch} | {'capture' if capture else 'fast'} | {t:.1f} | {s:.1f} | {t / s:.2f}x |")


if __name__ == "__main__":
    main()

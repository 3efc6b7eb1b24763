"""Forward + backward time of every VocaLiST distillation loss on behaviour shaped like the real models'.

Teacher: d 512, head_dim 64; student: d 200, head_dim 25; 8 heads; 5-frame windows (Tq/Tk 16 and 5).
The models themselves are not run: this isolates the cost the loss adds to a training step.

    python benchmarks/bench_distill.py --batch 128 --repeats 5 [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import torch

from mtdistill.distill import build_loss

SHAPES = {"av": (16, 5), "va": (5, 16), "fusion": (16, 5)}


@dataclass
class Captured:
    logits: torch.Tensor
    attention_logits: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)
    hidden: dict = field(default_factory=dict)
    pooled: torch.Tensor | None = None


def captured(batch: int, d: int, grad: bool) -> Captured:
    head_dim = d // 8
    out = Captured(logits=torch.randn(batch, requires_grad=grad), pooled=torch.randn(batch, d, requires_grad=grad))
    for block, (tq, tk) in SHAPES.items():
        mask = (torch.arange(tk)[None] - torch.arange(tq)[:, None]) >= 1 + abs(tk - tq)
        out.attention_logits[block] = [
            torch.randn(batch, 8, tq, tk).masked_fill(mask, float("-inf")).requires_grad_(grad) for _ in range(4)
        ]
        out.values[block] = [torch.randn(batch, 8, tk, head_dim, requires_grad=grad) for _ in range(4)]
        out.hidden[block] = [torch.randn(batch, tq, d, requires_grad=grad) for _ in range(4)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    student, teacher = captured(args.batch, 200, grad=True), captured(args.batch, 512, grad=False)
    labels = (torch.rand(args.batch) > 0.5).float()
    recipes = {
        "bce": {},
        "kd": {},
        "rkd": {},
        "minilm": {},
        "fitnets": {},
        "nmtd": {},
        "aw (25)": {"name": "aw"},
        "mtd uw-13": {"name": "mtd", "n_weights": 13},
        "mtd uw-25": {"name": "mtd"},
        "mtd uw-25, masked VA": {"name": "mtd", "va_clamp": False},
    }
    print(f"| loss | fwd+bwd ms (batch {args.batch}, median of {args.repeats}) |")
    print("|---|---|")
    for label, options in recipes.items():
        options = dict(options)
        loss = build_loss(options.pop("name", label), **options)
        times = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            loss(student, teacher if loss.needs_teacher else None, labels).backward()
            times.append(time.perf_counter() - start)
        times = sorted(times[1:])  # the first call warms up
        print(f"| {label} | {1000 * times[len(times) // 2]:.1f} |")


if __name__ == "__main__":
    main()

"""Protocol speed: the factorised fast path vs the official-style loop (31 full forwards per window).

Run by hand (never in tests):

    python benchmarks/bench_eval.py --models student,teacher --utterances 1 --frames 50

Random weights are fine for speed; both paths run on the same model and data and must give identical accuracies
(checked; the script exits 1 otherwise). Prints a Markdown table and writes it as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import torch

from mtdistill.evaluation import score_utterance
from mtdistill.models import VocaLiST


def utterances(n: int, frames: int, seed: int = 0) -> list[tuple[torch.Tensor, np.ndarray, int]]:
    g = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        f = torch.from_numpy(g.integers(0, 256, size=(frames, 3, 48, 96)).astype(np.float32))
        mel = g.uniform(-4, 4, size=(80, frames * 640 // 200 + 1)).astype(np.float32)
        out.append((f, mel, frames * 640))
    return out


def timed(model, data, fast: bool, device: str) -> tuple[float, int, list[dict], list[np.ndarray]]:
    start, windows, accs, scores = time.perf_counter(), 0, [], []
    for frames, mel, n_samples in data:
        s = score_utterance(model, frames, mel, n_samples=n_samples, fast=fast, device=device)
        windows += s.n_windows
        accs.append(s.accuracy)
        scores.append(s.scores)
    return time.perf_counter() - start, windows, accs, scores


def plain_subset(model, data, fast_scores, windows: int, device: str) -> tuple[float, int, float, bool]:
    """Plain loop on the first `windows` windows of each utterance (each plain window is one identical-cost forward,
    and row i of the plain matrix depends only on window i, so these rows must equal the fast path's rows)."""
    from mtdistill.evaluation.protocol import (
        _tie_padding,
        audio_windows,
        mask_padding,
        n_windows,
        offsets,
        video_windows,
    )

    total_t, total_w, diff, same = 0.0, 0, 0.0, True
    for (frames, mel, n_samples), fast in zip(data, fast_scores, strict=True):
        n = n_windows(frames.shape[0], n_samples, mel.shape[1])
        video = video_windows(frames, n)[:windows].to(device)
        audio = audio_windows(torch.from_numpy(mel), n).to(device)
        start = time.perf_counter()
        with torch.inference_mode():
            pad = torch.zeros((15, *audio.shape[1:]))
            padded = torch.cat([pad, audio, pad])
            rows = np.stack([model(v[None].expand(31, *v.shape), padded[i : i + 31]).float().cpu().numpy()
                             for i, v in enumerate(video)])  # fmt: skip
        total_t += time.perf_counter() - start
        total_w += rows.shape[0]
        full = np.full((n, 31), np.nan, dtype=np.float32)
        full[: rows.shape[0]] = rows
        plain = mask_padding(_tie_padding(full), True)[: rows.shape[0]]
        diff = max(diff, float(np.abs(plain - fast[: rows.shape[0]]).max()))
        same &= bool((offsets(plain) == offsets(fast[: rows.shape[0]])).all())
    return total_t, total_w, diff, same


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="student,teacher")
    ap.add_argument("--utterances", type=int, default=1)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the rows as JSON here")
    ap.add_argument(
        "--plain-windows",
        type=int,
        help="time the plain loop on only the first W windows per utterance "
        "(teacher on a busy CPU); checks those score rows and their K=5 offsets instead of accuracies",
    )
    args = ap.parse_args()
    torch.manual_seed(0)
    data = utterances(args.utterances, args.frames)
    rows = []
    for name in args.models.split(","):
        model = getattr(VocaLiST, name)().eval()
        timed(model, [(data[0][0][:8], data[0][1][:, :27], 8 * 640)], True, args.device)  # warm-up
        t_fast, windows, acc_fast, sc_fast = timed(model, data, True, args.device)
        print(f"{name}: fast {windows / t_fast:.2f} windows/s", file=sys.stderr, flush=True)
        if args.plain_windows:
            t_plain, w_plain, diff, same = plain_subset(model, data, sc_fast, args.plain_windows, args.device)
        else:
            t_plain, _, acc_plain, sc_plain = timed(model, data, False, args.device)
            w_plain = windows
            diff = max(float(np.abs(a - b).max()) for a, b in zip(sc_fast, sc_plain, strict=True))
            same = acc_fast == acc_plain
        plain_rate, fast_rate = w_plain / t_plain, windows / t_fast
        rows.append({"model": name, "params": model.num_parameters(), "windows": windows, "plain_windows": w_plain,
                     "plain_windows_per_s": plain_rate, "fast_windows_per_s": fast_rate,
                     "speedup": fast_rate / plain_rate, "identical": same, "max_score_diff": diff,
                     "check": "score rows + K=5 offsets" if args.plain_windows else "accuracies (all K)"})  # fmt: skip
        print(f"{name}: plain {plain_rate:.3f} windows/s, speed-up {fast_rate / plain_rate:.1f}x, same={same}",
              file=sys.stderr, flush=True)  # fmt: skip
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {args.device}")  # fmt: skip
    print("| model | params | windows (fast / plain) | plain (windows/s) | fast (windows/s) | speed-up | identical "
          "| max score diff |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['windows']} / {r['plain_windows']} | "
              f"{r['plain_windows_per_s']:.3f} | {r['fast_windows_per_s']:.3f} | {r['speedup']:.1f}x | "
              f"{r['identical']} ({r['check']}) | {r['max_score_diff']:.1e} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

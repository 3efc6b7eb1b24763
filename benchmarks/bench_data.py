"""Loader throughput (packed store vs Wav2Lip jpg folders) and peak memory of `mtdistill prepare`.

Run by hand (minutes on 2 cores):

    python benchmarks/bench_data.py --workdir /tmp/bench_data

1. `synth` a corpus, export it to the Wav2Lip-preprocessed layout (jpg face crops + audio.wav, as Wav2Lip's
   preprocess.py does), and `prepare` that layout into stores (contiguous default and lzf-compressed).
2. Draw training pairs with the official rule (design.md §3.4) from both:
   - jpg: what the official loaders do per sample: list + natural-sort the utterance's jpgs, check the 5 files,
     cv2.imread + resize 96x96 + lower half of each, soundfile seek/read of the 3,200-sample chunk(s);
   - store: mtdistill.data.pairs.PairDataset (memory-mapped shard, same rule);
   "fetch": video window + audio chunk, no mel; "per-item mel": with chunk_mel per sample (PairDataset's
   default item); "batched mel": waves of 64 pairs, one chunk_mel_torch per batch (the official training
   loops compute the mel batch-wise; PairDataset(return_wave=True) supports that).
3. Peak RSS of `mtdistill prepare` on the video corpus (decode + detect + track + crop) with 1 and 2 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf
import torch

from mtdistill.audio import chunk_mel, chunk_mel_torch
from mtdistill.core.quirks import Quirks
from mtdistill.data.pairs import PairDataset, draw_pair, rms
from mtdistill.data.prepare import prepare
from mtdistill.data.synthetic import synth_corpus
from mtdistill.data.wav2lip_export import export_corpus


class JpgFolderPairs:
    """The official loader's per-sample work on a Wav2Lip-layout folder (a re-implementation from the spec)."""

    def __init__(self, folders: list[Path], min_frames: int = 25) -> None:
        self.folders = folders
        self.min_frames = min_frames

    def chunk(self, folder: Path, start: int) -> np.ndarray:
        with sf.SoundFile(str(folder / "audio.wav")) as fh:
            fh.seek(start * 640)
            return fh.read(3200, dtype="float32")

    def sample(self, rng: np.random.Generator, with_mel: bool) -> dict:
        while True:
            folder = self.folders[int(rng.integers(len(self.folders)))]
            jpgs = sorted((p for p in folder.iterdir() if p.suffix == ".jpg"), key=lambda p: int(p.stem))
            n = len(jpgs)
            if n <= self.min_frames:
                continue
            names = {p.name for p in jpgs}
            valid = np.array([f"{i}.jpg" in names for i in range(n)])
            cache: dict[int, float] = {}

            def chunk_rms(s: int, folder: Path = folder, cache: dict[int, float] = cache) -> float:
                if s not in cache:
                    cache[s] = rms(self.chunk(folder, s))
                return cache[s]

            drawn = draw_pair(rng, n, valid, chunk_rms, Quirks())
            if drawn is None:
                continue
            pos, aud, label = drawn
            faces = []
            for i in range(pos, pos + 5):
                img = cv2.imread(str(folder / f"{i}.jpg"))
                faces.append(cv2.resize(img, (96, 96))[48:])
            video = torch.from_numpy(np.concatenate(faces, axis=2)).permute(2, 0, 1).float() / 255.0
            wave = self.chunk(folder, aud)
            out = {"video": video, "label": torch.tensor(label)}
            if with_mel:
                out["mel"] = torch.from_numpy(chunk_mel(wave))[None]
            else:
                out["wave"] = torch.from_numpy(wave)
            return out


def store_fetch(ds: PairDataset, rng: np.random.Generator) -> dict:
    """PairDataset's work without the mel (same rule, same tensors for the video)."""
    uid, start, aud, label = ds.sample(rng)
    return ds.item(uid, start, aud, label)  # ds built with return_wave=True


def batched(fetch, batch: int = 64):
    """Fetch `batch` waves, then one chunk_mel_torch for the batch (what the official training loops do)."""

    def run() -> None:
        waves = [fetch()["wave"] for _ in range(batch)]
        chunk_mel_torch(torch.stack([torch.as_tensor(w, dtype=torch.float32) for w in waves]))

    return run


def rate(fn, n: int) -> float:
    fn()  # warm-up (imports, first file opens)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t)


def peak_rss_of(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB of the largest process) of a command run in a fresh child."""
    code = (
        "import resource, subprocess, sys, time\n"
        "t = time.time(); subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "print(time.time() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True).stdout
    secs, kib = out.split()
    return float(secs), int(kib) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/bench_data")
    ap.add_argument("--n-speakers", type=int, default=4)
    ap.add_argument("--n-utterances", type=int, default=4)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--samples", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(1)  # a DataLoader worker runs with one thread; measure the same
    cv2.setNumThreads(1)
    work = Path(args.workdir)
    corpus, w2l = work / "corpus", work / "wav2lip"
    t = time.time()
    synth_corpus(
        corpus,
        args.n_speakers,
        args.n_utterances,
        seed=0,
        duration=(args.duration, args.duration),
        splits="pretrain=1",
        workers=2,
        progress=False,
    )
    t_synth = time.time() - t
    if not w2l.exists():
        export_corpus(corpus, w2l)
    stores = {}
    for comp in (None, "lzf"):
        out = work / f"store_{comp or 'none'}"
        s = prepare(w2l, out, workers=2, compression=comp, progress=False)
        size = sum(p.stat().st_size for p in (out / "shards").glob("*.h5")) / 2**20
        stores[comp or "none"] = (out, s, size)
    jpg_mib = sum(p.stat().st_size for p in w2l.rglob("*") if p.is_file()) / 2**20

    folders = sorted({p.parent for p in w2l.rglob("audio.wav")})
    jpg = JpgFolderPairs(folders)
    rng = np.random.default_rng(0)
    ds = {k: PairDataset(v[0], split="pretrain", preset="vocalist", length=10**6) for k, v in stores.items()}
    dw = {k: PairDataset(v[0], split="pretrain", preset="vocalist", length=10**6, return_wave=True)
          for k, v in stores.items()}  # fmt: skip
    n, b = args.samples, 64
    rows = {
        "fetch: jpg folders (official-style)": rate(lambda: jpg.sample(rng, False), n),
        "fetch: store (default, memory-mapped)": rate(lambda: store_fetch(dw["none"], rng), n),
        "fetch: store (lzf chunks)": rate(lambda: store_fetch(dw["lzf"], rng), n),
        "per-item mel: jpg folders + chunk_mel": rate(lambda: jpg.sample(rng, True), n),
        "per-item mel: store PairDataset item": rate(lambda: ds["none"][0], n),
        "per-item mel: store lzf PairDataset item": rate(lambda: ds["lzf"][0], n),
        "batched mel (B=64): jpg folders + chunk_mel_torch": b * rate(batched(lambda: jpg.sample(rng, False), b),
                                                                      max(2, n // b)),
        "batched mel (B=64): store return_wave + chunk_mel_torch": b * rate(batched(lambda: store_fetch(
            dw["none"], rng), b), max(2, n // b)),
    }  # fmt: skip
    # peak memory of prepare on the videos (decode, detect, track, crop, write)
    mem = {}
    for workers in (1, 2):
        out = work / f"prepare_mem_w{workers}"
        if out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        cmd = [sys.executable, "-m", "mtdistill", "prepare", str(corpus), str(out), "--quiet"]
        cmd += ["--workers", str(workers)]
        mem[workers] = peak_rss_of(cmd)
    n_videos = args.n_speakers * args.n_utterances
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}",
        "load_avg_1min": os.getloadavg()[0],
        "corpus": f"{n_videos} videos x {args.duration} s, 160x160, 25 fps",
        "synth_seconds": round(t_synth, 1),
        "samples_per_s": {k: round(v, 1) for k, v in rows.items()},
        "disk_mib": {"jpg+wav": round(jpg_mib, 1), **{f"store {k}": round(v[2], 1) for k, v in stores.items()}},
        "prepare_videos": {
            f"{w} worker(s)": {"seconds": round(m[0], 1), "peak_rss_mib": round(m[1], 1)} for w, m in mem.items()
        },
        "self_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    (work / "bench_data.json").write_text(json.dumps(result, indent=1))
    print(f"machine: {result['machine']}; load avg {result['load_avg_1min']:.1f}; corpus: {result['corpus']}")
    print("\n| loader | samples/s | vs jpg |\n|---|---:|---:|")
    for k, v in rows.items():
        ref = next(r for name, r in rows.items() if name.split(":")[0] == k.split(":")[0])  # the jpg row
        print(f"| {k} | {v:.0f} | {v / ref:.1f}x |")
    print("\n| prepare (videos) | seconds | peak RSS (MiB) |\n|---|---:|---:|")
    for w, m in mem.items():
        print(f"| --workers {w} | {m[0]:.1f} | {m[1]:.0f} |")
    print(f"\ndisk (MiB): {result['disk_mib']}")


if __name__ == "__main__":
    main()

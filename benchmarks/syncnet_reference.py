"""LSE-C / LSE-D of `sync --model syncnet --detector none` against syncnet_python's `evaluate()` on face-crop clips.

    python benchmarks/syncnet_reference.py CLIP.mp4 [CLIP.mp4 ...] [--json]

Needs a system ``ffmpeg`` and ``pip install --no-deps syncnet-python python-speech-features`` (only the
package's SyncNetInstance.py / SyncNetModel.py are loaded, by path: its __init__ pulls in its whole pipeline).
Both sides get the same random weights in the ``syncnet_v2.model`` format (a plain dict of tensors, legacy
serialisation): BatchNorm statistics measured on the first clip and one bias shared by both embeddings, so that
the distance curve has a real minimum instead of the zero-padded edges. The reference gets the clip as
syncnet_python hands it over: ``ffmpeg -threads 1 -f image2 %06d.jpg`` frames and a pcm_s16le 16 kHz wav.
Prints, per clip, the offsets and the relative LSE errors of our default (JPEG + int16) and lossless readings.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import av
import numpy as np
import torch

from mtdistill.core.quirks import Quirks
from mtdistill.inference.syncnet_sync import sync_video_syncnet
from mtdistill.media.audio import load_audio
from mtdistill.models.syncnet import SyncNet, mfcc, mfcc_windows


def reference_modules() -> tuple[types.ModuleType, types.ModuleType] | None:
    """syncnet_python's SyncNetModel and SyncNetInstance modules, or None when not installed."""
    spec = importlib.util.find_spec("syncnet_python")
    if spec is None or importlib.util.find_spec("python_speech_features") is None:
        return None
    loc = Path(spec.submodule_search_locations[0])
    mods = []
    for name in ("SyncNetModel", "SyncNetInstance"):
        s = importlib.util.spec_from_file_location(f"reference_{name}", loc / f"{name}.py")
        m = importlib.util.module_from_spec(s)
        s.loader.exec_module(m)
        mods.append(m)
    return mods[0], mods[1]


def random_weights(path: Path, clip: Path, seed: int = 0) -> Path:
    """Random SyncNet weights in the syncnet_v2.model format, calibrated on ``clip`` (see the module docstring)."""
    torch.manual_seed(seed)
    net = SyncNet()
    with av.open(str(clip)) as c:
        frames = np.stack([f.to_ndarray(format="bgr24") for _, f in zip(range(30), c.decode(video=0), strict=False)])
    x = torch.from_numpy(frames).float().permute(3, 0, 1, 2)[None]
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a plain average over the calibration batch
            m.reset_running_stats()
    with torch.no_grad():
        net.train()
        net.forward_lip(torch.cat([x[:, :, i : i + 5] for i in range(0, 25, 2)]))
        net.forward_aud(mfcc_windows(mfcc(load_audio(clip), int16=True), np.arange(40)))
        net.eval()
        bias = 0.8 * torch.randn(1024)
        net.netfclip[3].bias += bias
        net.netfcaud[3].bias += bias
    torch.save(dict(net.state_dict()), path, _use_new_zipfile_serialization=False)
    return path


def reference_lse(clip: Path, weights: Path, work: Path, ffmpeg: str = "ffmpeg") -> tuple[int, float, float]:
    """(offset, LSE-C, LSE-D) of syncnet_python's evaluate() on ``clip``, its inputs made as syncnet_python does."""
    model_mod, instance_mod = reference_modules()  # type: ignore[misc]
    work.mkdir(parents=True, exist_ok=True)
    run = [ffmpeg, "-v", "error", "-y", "-i", str(clip)]
    subprocess.run([*run, "-threads", "1", "-f", "image2", str(work / "%06d.jpg")], check=True)
    subprocess.run(
        [*run, "-async", "1", "-ac", "1", "-vn", "-acodec", "pcm_s16le", "-ar", "16000", str(work / "audio.wav")],
        check=True,
    )
    reference = instance_mod.SyncNetInstance(model_mod.S(), device="cpu")
    reference.loadParameters(str(weights))
    with contextlib.redirect_stdout(io.StringIO()):
        offset, conf, dist = reference.evaluate(types.SimpleNamespace(tmp_dir=str(work), batch_size=20, vshift=15))
    return int(offset), float(conf), float(dist)


def compare(clips: list[Path], seed: int = 0) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = random_weights(Path(tmp) / "syncnet_v2.model", clips[0], seed)
        for i, clip in enumerate(clips):
            offset, conf, dist = reference_lse(clip, weights, Path(tmp) / f"clip{i}")
            row = {"clip": clip.name, "reference": {"offset": offset, "lse_c": conf, "lse_d": dist}}
            for name, quirks in (("default", Quirks()), ("lossless", Quirks(syncnet_jpeg_roundtrip=False))):
                t = sync_video_syncnet(clip, SyncNet.from_checkpoint(weights, quirks=quirks), detector="none").tracks[0]
                row[name] = {
                    "offset": t.offset_frames,
                    "lse_c": t.lse_c,
                    "lse_d": t.lse_d,
                    "rel_c": abs(t.lse_c - conf) / abs(conf),
                    "rel_d": abs(t.lse_d - dist) / abs(dist),
                }
            rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clips", nargs="+", type=Path, help="224x224 25 fps face-crop clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("ffmpeg") is None or reference_modules() is None:
        print("needs ffmpeg and `pip install --no-deps syncnet-python python-speech-features`", file=sys.stderr)
        return 2
    rows = compare(args.clips, args.seed)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print("| clip | offset ref / ours | LSE-C ref / ours | LSE-D ref / ours | rel. C | rel. D | lossless rel. C / D |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ref, ours, raw = r["reference"], r["default"], r["lossless"]
        print(
            f"| {r['clip']} | {ref['offset']} / {ours['offset']} | {ref['lse_c']:.4f} / {ours['lse_c']:.4f} | "
            f"{ref['lse_d']:.4f} / {ours['lse_d']:.4f} | {ours['rel_c']:.1e} | {ours['rel_d']:.1e} | "
            f"{raw['rel_c']:.1e} / {raw['rel_d']:.1e} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

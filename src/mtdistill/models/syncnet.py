"""SyncNet in the layout of the public ``syncnet_v2.model`` file, its preprocessing, and LSE-C / LSE-D.

Written from a description of the public syncnet_python code (Chung & Zisserman, "Out of time", 2016),
not copied from it. What is certain and what is not:

- Module names ``netcnnaud`` / ``netfcaud`` / ``netcnnlip`` / ``netfclip`` and the Sequential indices below
  (conv, BN, ReLU, pool per stage) follow that format, so ``syncnet_v2.model`` (a plain state_dict saved
  with ``torch.save``) is expected to load into this class. The file is not available here, so loading
  the real file was NOT tested; ``from_checkpoint`` reports missing / unexpected keys in one line.
- The lip stream of the public file takes **colour** 224x224 crops (3 input channels, BGR as read by
  OpenCV, 0..255), even though the paper used grey mouths; ``in_channels`` is inferred from the file.
- BatchNorm ``num_batches_tracked`` buffers are absent in files saved by old PyTorch versions; they are
  optional here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from torch import nn

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import FAITHFUL, Quirks
from mtdistill.core.safeio import safe_torch_load
from mtdistill.core.timing import ANALYSIS_FPS, SAMPLE_RATE, SEARCH_RANGE

MFCC_RATE = 100  # MFCC frames per second (10 ms step): 4 per video frame at 25 fps
MFCC_PER_WINDOW = 20  # 5 video frames = 20 MFCC frames
FACE_SIZE = 224


def _conv_bn_relu(conv: nn.Module, bn: nn.Module) -> list[nn.Module]:
    return [conv, bn, nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """Two-stream SyncNet: MFCC (1, 13, 20) -> 1024-d and 5 face frames (C, 5, 224, 224) -> 1024-d."""

    def __init__(self, embed_dim: int = 1024, in_channels: int = 3, quirks: Quirks = FAITHFUL) -> None:
        super().__init__()
        self.quirks = quirks  # syncnet_jpeg_roundtrip: how `sync --model syncnet` prepares the inputs
        self.netcnnaud = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(1, 64, 3, 1, 1), nn.BatchNorm2d(64)),
            nn.MaxPool2d(kernel_size=1, stride=1),
            *_conv_bn_relu(nn.Conv2d(64, 192, 3, 1, 1), nn.BatchNorm2d(192)),
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
            *_conv_bn_relu(nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384)),
            *_conv_bn_relu(nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256)),
            *_conv_bn_relu(nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256)),
            nn.MaxPool2d(kernel_size=3, stride=2),
            *_conv_bn_relu(nn.Conv2d(256, 512, (5, 4)), nn.BatchNorm2d(512)),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netcnnlip = nn.Sequential(
            *_conv_bn_relu(nn.Conv3d(in_channels, 96, (5, 7, 7), (1, 2, 2), 0), nn.BatchNorm3d(96)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn_relu(nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn_relu(nn.Conv3d(256, 512, (1, 6, 6)), nn.BatchNorm3d(512)),
        )
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.in_channels = in_channels

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(B, 1, 13, 20) MFCC windows -> (B, embed_dim)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, C, 5, 224, 224) face windows (0..255, BGR) -> (B, embed_dim)."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))

    def forward(self, frames: torch.Tensor, mfcc: torch.Tensor) -> torch.Tensor:
        """Pairwise L2 distance between each window's video and audio embeddings, (B,)."""
        return pairwise_distance(self.forward_lip(frames), self.forward_aud(mfcc))

    @classmethod
    def from_checkpoint(cls, path: str | Path, quirks: Quirks = FAITHFUL) -> SyncNet:
        """Load a ``syncnet_v2.model``-format state_dict (strict, apart from optional BN counters).

        ``quirks=Quirks(syncnet_jpeg_roundtrip=False)`` gives lossless inputs (see `JpegRoundTrip`)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"SyncNet checkpoint {path} not found; pass the syncnet_v2.model file with --checkpoint")

        state = safe_torch_load(path)
        if not isinstance(state, dict):
            raise UserError(f"{path} is not a SyncNet (syncnet_v2) state_dict; pass syncnet_v2.model")
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        state = {k.removeprefix("module.").removeprefix("__S__."): v for k, v in state.items()}
        lip0 = state.get("netcnnlip.0.weight")
        fc_out = state.get("netfcaud.3.weight")
        if lip0 is None or fc_out is None:
            raise UserError(f"{path} is not a SyncNet (syncnet_v2) state_dict; netcnnlip/netfcaud keys are missing")
        model = cls(embed_dim=int(fc_out.shape[0]), in_channels=int(lip0.shape[1]), quirks=quirks)
        load_syncnet_state_dict(model, state)
        return model.eval()


def load_syncnet_state_dict(model: SyncNet, state: dict[str, torch.Tensor]) -> None:
    """Strict load that tolerates missing ``num_batches_tracked`` (absent in pre-0.4 PyTorch files)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(
            f"SyncNet state_dict mismatch: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}; is this syncnet_v2.model?"
        )


def pairwise_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """||a - b + eps||_2 per row, as torch.nn.functional.pairwise_distance (used by syncnet_python)."""
    return torch.nn.functional.pairwise_distance(a, b, eps=eps)


# ---------------------------------------------------------------- preprocessing (python_speech_features-like)


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


def mfcc_filterbank(n_filt: int = 26, n_fft: int = 512, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Triangular filters on FFT bins floor((nfft+1) * hz / sr), 0 Hz .. sr/2 (python_speech_features)."""
    mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_filt + 2)
    bins = np.floor((n_fft + 1) * _mel_to_hz(mels) / sr).astype(int)
    fbank = np.zeros((n_filt, n_fft // 2 + 1))
    for j in range(n_filt):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        for i in range(lo, mid):
            fbank[j, i] = (i - lo) / (mid - lo)
        for i in range(mid, hi):
            fbank[j, i] = (hi - i) / (hi - mid)
    return fbank


def int16_samples(wave: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as the int16 values ffmpeg's pcm_s16le writes (x 32768, round half to even,
    clipped), as float64: what syncnet_python's scipy wavfile.read hands to its MFCC."""
    return np.clip(np.rint(np.asarray(wave, dtype=np.float64) * 32768.0), -32768.0, 32767.0)


def mfcc(wave_16k: np.ndarray, sr: int = SAMPLE_RATE, int16: bool = False) -> np.ndarray:
    """13 MFCCs at 100 Hz, shape (13, F), with the recipe syncnet_python feeds its net.

    25 ms rectangular frames every 10 ms (zero-padded tail), pre-emphasis 0.97, 512-point power spectrum / 512,
    26 triangular mel filters, log, orthonormal DCT-II, lifter 22, coefficient 0 replaced by log frame energy.
    The waveform is scaled to int16 units because syncnet_python reads the wav with scipy (int16 samples);
    ``int16`` also rounds (and clips) them as that wav does (`int16_samples`; what `sync --model syncnet` does).
    """
    from scipy.fft import dct

    x = int16_samples(wave_16k) if int16 else np.asarray(wave_16k, dtype=np.float64) * 32768.0
    x = np.append(x[:1], x[1:] - 0.97 * x[:-1])
    win, step = int(round(0.025 * sr)), int(round(0.01 * sr))
    n_frames = 1 if len(x) <= win else 1 + int(np.ceil((len(x) - win) / step))
    x = np.concatenate([x, np.zeros((n_frames - 1) * step + win - len(x))])
    idx = np.arange(win)[None, :] + step * np.arange(n_frames)[:, None]
    power = np.abs(np.fft.rfft(x[idx], 512)) ** 2 / 512.0
    eps = np.finfo(float).eps
    energy = power.sum(1)
    energy[energy == 0] = eps
    feat = power @ mfcc_filterbank(26, 512, sr).T
    feat[feat == 0] = eps
    cep = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :13]
    cep = cep * (1 + 11.0 * np.sin(np.pi * np.arange(13) / 22.0))
    cep[:, 0] = np.log(energy)
    return cep.T.astype(np.float32)


def face_crop_box(cx: float, cy: float, size: float, crop_scale: float = 0.4) -> tuple[int, int, int, int]:
    """syncnet_python's crop around a (smoothed) face box: half-size bs = max(w, h) / 2, square of side
    2*bs*(1+cs), extending bs above the centre and bs*(1+2cs) below it. Returns (x0, y0, x1, y1) that may
    lie outside the frame (the caller pads with grey 110 as syncnet_python does)."""
    bs = size / 2.0
    return (
        int(cx - bs * (1 + crop_scale)),
        int(cy - bs),
        int(cx + bs * (1 + crop_scale)),
        int(cy + bs * (1 + 2 * crop_scale)),
    )


def full_range_yuv420p(yuv: np.ndarray) -> np.ndarray:
    """Limited-range (16..235 / 16..240) planar 4:2:0, packed as (H * 3 / 2, W) uint8, to full range (JPEG).

    Exact rounding of (Y - 16) * 255 / 219 and (C - 128) * 255 / 224 + 128: what FFmpeg's scaler gives when
    ffmpeg turns a decoded yuv420p clip into the mjpeg encoder's yuvj420p (checked bit for bit against FFmpeg
    5.1; newer libswscale rounds chroma differently, PyAV's bundled one included, hence not used for this).
    """
    h = yuv.shape[0] * 2 // 3
    x = yuv.astype(np.float64)
    out = np.empty_like(yuv)
    out[:h] = np.clip(np.rint((x[:h] - 16.0) * 255.0 / 219.0), 0, 255)
    out[h:] = np.clip(np.rint((x[h:] - 128.0) * 255.0 / 224.0 + 128.0), 0, 255)
    return out


class JpegRoundTrip:
    """Frames as syncnet_python's evaluate() reads them, computed in memory.

    syncnet_python extracts a clip's frames with ``ffmpeg -i CLIP -threads 1 -f image2 %06d.jpg`` (no quality
    option) and reads them back with ``cv2.imread``. That is FFmpeg's mjpeg encoder with its defaults: full-range
    4:2:0 (``yuvj420p``) input, and the rate control of ``-b:v`` 200 kb/s at the clip's 25 fps, whose quantiser
    follows the frames seen so far. One instance per clip (per face track), fed every frame in order, reproduces
    that with PyAV's mjpeg encoder (the same quantised pictures as FFmpeg 5.1's; only its Huffman tables differ)
    and OpenCV's JPEG decoder. `from_yuv420p` takes a decoded clip frame as ffmpeg has it; ``__call__`` takes a
    BGR crop (mtdistill's own crops), made 4:2:0 limited range first as a crop clip would be.
    """

    def __init__(self, fps: int = ANALYSIS_FPS) -> None:
        self.fps = fps
        self.ctx: av.VideoCodecContext | None = None
        self.pts = 0

    def _encoder(self, width: int, height: int) -> av.VideoCodecContext:
        if self.ctx is None:
            ctx = av.CodecContext.create("mjpeg", "w")
            ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuvj420p"
            ctx.time_base = Fraction(1, self.fps)
            ctx.framerate = Fraction(self.fps)
            ctx.thread_count = 1  # upstream's -threads 1
            ctx.bit_rate = 200_000  # FFmpeg's default -b:v (explicit: the rate control depends on it)
            self.ctx = ctx
        elif (width, height) != (self.ctx.width, self.ctx.height):
            raise ValueError(f"JpegRoundTrip got a {width}x{height} frame after {self.ctx.width}x{self.ctx.height}")
        return self.ctx

    def from_yuv420p(self, yuv: np.ndarray, full_range: bool = False) -> np.ndarray:
        """A (H * 3 / 2, W) planar yuv420p frame (limited range unless ``full_range``) -> the decoded BGR JPEG."""
        h, w = yuv.shape[0] * 2 // 3, yuv.shape[1]
        ctx = self._encoder(w, h)
        frame = av.VideoFrame.from_ndarray(yuv if full_range else full_range_yuv420p(yuv), format="yuvj420p")
        frame.pts = self.pts
        self.pts += 1
        data = b"".join(bytes(p) for p in ctx.encode(frame))
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)

    def __call__(self, bgr: np.ndarray) -> np.ndarray:
        """A BGR uint8 (H, W, 3) frame (even H and W) -> the BGR frame its JPEG decodes to."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr), format="bgr24").reformat(format="yuv420p")
        return self.from_yuv420p(frame.to_ndarray())


def crop_face(frame_bgr: np.ndarray, box: tuple[int, int, int, int], out: int = FACE_SIZE) -> np.ndarray:
    """Crop (padding outside the frame with 110) and resize to out x out (cv2 bilinear)."""
    x0, y0, x1, y1 = box
    h, w = frame_bgr.shape[:2]
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    if pad:
        frame_bgr = np.pad(frame_bgr, ((pad, pad), (pad, pad), (0, 0)), constant_values=110)
    crop = frame_bgr[y0 + pad : y1 + pad, x0 + pad : x1 + pad]
    return cv2.resize(crop, (out, out))


# ---------------------------------------------------------------- LSE metrics


@dataclass(frozen=True)
class LSEResult:
    """syncnet_python's readout: offset (frames), LSE-D (min mean distance), LSE-C (median - min)."""

    offset_frames: int
    lse_d: float
    lse_c: float
    curve: list[float]  # mean distance per candidate offset j (column j = audio shift vshift - j)


def candidate_distances(
    video_emb: torch.Tensor,
    audio_emb: torch.Tensor,
    vshift: int = SEARCH_RANGE,
    starts: Sequence[int] | np.ndarray | None = None,
) -> torch.Tensor:
    """(N, 2*vshift+1) distances: row i, column j = ||v_i - a_{s_i - vshift + j}||, audio zero-padded.

    ``video_emb`` row i is the video window starting at frame ``starts[i]`` (default: i, every window) and
    ``audio_emb`` row k the audio window starting at frame k. As syncnet_python's calc_pdist: the audio
    embeddings are padded with zero vectors, so edge candidates are distances to the zero vector (they take
    part in the mean, like upstream).
    """
    n = video_emb.shape[0]
    starts = range(n) if starts is None else [int(s) for s in starts]
    padded = torch.nn.functional.pad(audio_emb, (0, 0, vshift, vshift))
    rows = [
        pairwise_distance(video_emb[i : i + 1].expand(2 * vshift + 1, -1), padded[s : s + 2 * vshift + 1])
        for i, s in enumerate(starts)
    ]
    return torch.stack(rows) if rows else torch.zeros(0, 2 * vshift + 1)


def lse_metrics(distances: torch.Tensor | np.ndarray, vshift: int = SEARCH_RANGE) -> LSEResult:
    """LSE-D = min_j mean_i d[i, j]; LSE-C = median_j(mean d) - LSE-D; offset = vshift - argmin_j.

    Median as torch.median (the lower of the two middle values for an even count; 31 is odd anyway).
    """
    d = torch.as_tensor(distances, dtype=torch.float64)
    if d.ndim != 2 or d.shape[0] == 0:
        raise UserError("too few frames for SyncNet scoring; need at least 6 video frames with audio")
    mdist = d.mean(0)
    minval, minidx = torch.min(mdist, 0)
    conf = torch.median(mdist) - minval
    return LSEResult(vshift - int(minidx), float(minval), float(conf), [float(x) for x in mdist])


def mfcc_windows(mfcc_feat: np.ndarray, starts: np.ndarray) -> torch.Tensor:
    """(13, F) MFCC -> (W, 1, 13, 20) windows at MFCC columns 4*v (syncnet_python's vframe*4)."""
    cols = np.asarray(starts)[:, None] * 4 + np.arange(MFCC_PER_WINDOW)[None, :]
    return torch.from_numpy(mfcc_feat[:, cols].transpose(1, 0, 2)[:, None].copy()).float()

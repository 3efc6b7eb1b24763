"""Audio for VocaLiST / MTDVocaLiST: loading and resampling any media file, and the official mel recipe.

The mel recipe is the one the official training and test code compute with torch (spec vocalist.md §3.2),
which is NOT Wav2Lip's ``audio.melspectrogram`` (no pre-emphasis, magnitude STFT, Slaney mel):

1. STFT: n_fft 800, hop 200, window 800 periodic Hann, ``center=True`` with reflect padding, magnitude |X|;
2. mel: the Slaney filterbank of ``librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)``;
3. level: ``S_dB = 20 log10(max(mel, 1e-5)) - 20``;
4. normalisation: ``M = clip(8 (S_dB + 100) / 100 - 4, -4, 4)``.

Training chunks (3,200 samples = 5 video frames) give 17 STFT frames and the 17th is dropped; at test time one
mel is computed over the whole utterance and the window of video frame v is columns
``[mel_window_start(v), mel_window_start(v) + 16)``.
"""

from __future__ import annotations

import os
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
import torch

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import Quirks
from mtdistill.core.timing import MEL_HOP, MEL_WINDOW, SAMPLE_RATE, WINDOW_SAMPLES, mel_window_start
from mtdistill.media import decode

N_FFT = 800
WIN = 800
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0

MIN_LEVEL = 1e-5  # 10 ** (-100 / 20)
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0


# --------------------------------------------------------------------------------------------- loading


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of any file PyAV reads; mono float32 in [-1, 1] at `sr` Hz.

    - Any container/codec FFmpeg decodes (wav, flac, mp3, mp4/aac, mkv/opus, ...); any sample format.
    - Down-mix: the plain mean of the channels (stereo -> (L + R) / 2), done in numpy so it does not depend on
      libswresample's rematrixing defaults.
    - Resampling: soxr at "HQ" quality (a band-limited polyphase resampler; librosa's default engine), applied
      once to the whole signal so there are no chunk-boundary artefacts. Input already at `sr` is not touched.
    - Timeline: sample 0 is t = 0 of the container (the same origin ``mtdistill.video.iter_frames`` uses), so
      a stream that starts late is padded with zeros and audio and video stay aligned.

    Raises UserError for unreadable files and for files without an audio stream.
    """
    if sr <= 0:
        raise UserError(f"sample rate must be positive, got {sr}")
    with decode.open_media(path) as container:
        if not container.streams.audio:
            raise UserError(f"{path}: no audio stream; this step needs sound (use a file with an audio track)")
        stream = container.streams.audio[0]
        origin = decode.container_origin(container)
        native_rate = int(stream.rate or stream.codec_context.sample_rate or 0)
        # format conversion only (layout and rate kept): every sample format becomes planar float32
        to_float = av.AudioResampler(format="fltp")
        pieces: list[np.ndarray] = []
        first_time: Fraction | None = None
        try:
            for frame in container.decode(stream):
                if first_time is None and frame.pts is not None and frame.time_base is not None:
                    first_time = Fraction(frame.pts) * Fraction(frame.time_base)
                native_rate = frame.sample_rate or native_rate
                for out in to_float.resample(frame):
                    pieces.append(out.to_ndarray().mean(axis=0, dtype=np.float64).astype(np.float32))
            for out in to_float.resample(None):
                pieces.append(out.to_ndarray().mean(axis=0, dtype=np.float64).astype(np.float32))
        except av.error.FFmpegError as exc:
            if not pieces:
                raise decode.decode_error(path, exc) from None
            # a truncated tail: keep what decoded (documented in docs/media.md), and say so to the active report
            decode.note_decode_error(
                path, "audio", exc, sum(len(x) for x in pieces) / max(native_rate, 1), stopped=True
            )
        if not pieces or native_rate <= 0:
            raise UserError(f"{path}: the audio stream holds no decodable samples; check the file")
        wave = np.concatenate(pieces)
        if first_time is None:
            first_time = decode.stream_start(stream, origin)
    lead = int(round(float(first_time - origin) * native_rate))
    if lead > 0:
        wave = np.concatenate([np.zeros(lead, np.float32), wave])
    elif lead < 0:
        wave = wave[-lead:]
    decode.note_decoded_end(path, "audio", len(wave) / native_rate)
    return resample(wave, native_rate, sr)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling with soxr (HQ); identity when the rates match."""
    wave = np.ascontiguousarray(wave, dtype=np.float32)
    if orig_sr == target_sr:
        return wave
    import soxr  # installed with librosa

    return np.ascontiguousarray(soxr.resample(wave, orig_sr, target_sr, quality="HQ"), dtype=np.float32)


# --------------------------------------------------------------------------------------------- the recipe


MEL_BASIS_FILE = Path(__file__).parents[1] / "resources" / "mel_basis_slaney_16k_800_80_55_7600.npy"


def librosa_mel_basis() -> np.ndarray:
    """The (80, 401) Slaney mel filterbank (spec §3.2) straight from librosa (equals torchaudio's MelScale)."""
    import librosa

    return librosa.filters.mel(
        sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX, norm="slaney", htk=False
    )


@lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """librosa's filterbank, read from the copy saved with the package (a test checks they are identical):
    importing librosa costs ~2 s, most of a short clip's `sync` time. Falls back to librosa itself."""
    if MEL_BASIS_FILE.is_file():
        return np.load(MEL_BASIS_FILE)
    return librosa_mel_basis()


_TORCH_CACHE: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _window_and_basis(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    key = (str(device), dtype)
    if key not in _TORCH_CACHE:
        window = torch.hann_window(WIN, periodic=True, dtype=dtype, device=device)
        basis = torch.from_numpy(mel_basis()).to(device=device, dtype=dtype)
        _TORCH_CACHE[key] = (window, basis)
    return _TORCH_CACHE[key]


def stft_magnitude(wave: torch.Tensor) -> torch.Tensor:
    """|STFT| (spec §3.2): n_fft 800, hop 200, periodic Hann 800, center=True, reflect; (..., S) -> (..., 401, F)."""
    window, _ = _window_and_basis(wave.device, wave.dtype)
    lead = wave.shape[:-1]
    spec = torch.stft(
        wave.reshape(-1, wave.shape[-1]),
        n_fft=N_FFT,
        hop_length=MEL_HOP,
        win_length=WIN,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    mag = spec.abs()
    return mag.reshape(*lead, *mag.shape[-2:])


def linear_to_mel(magnitude: torch.Tensor) -> torch.Tensor:
    """Slaney mel projection (spec §3.2): (..., 401, F) -> (..., 80, F)."""
    _, basis = _window_and_basis(magnitude.device, magnitude.dtype)
    return torch.matmul(basis, magnitude)


def amp_to_db(mel: torch.Tensor) -> torch.Tensor:
    """Level (spec §3.2): S_dB = 20 log10(max(mel, 1e-5)) - 20."""
    return 20.0 * torch.log10(torch.clamp(mel, min=MIN_LEVEL)) - REF_LEVEL_DB


def normalize_db(s_db: torch.Tensor) -> torch.Tensor:
    """Normalisation (spec §3.2): M = clip(8 (S_dB + 100) / 100 - 4, -4, 4)."""
    scaled = 2.0 * MAX_ABS_VALUE * (s_db - MIN_LEVEL_DB) / (-MIN_LEVEL_DB) - MAX_ABS_VALUE
    return torch.clamp(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE)


def mel_torch(wave: torch.Tensor) -> torch.Tensor:
    """The whole recipe on any device: (..., S) float waveform at 16 kHz -> (..., 80, S // 200 + 1) in [-4, 4]."""
    if wave.shape[-1] <= N_FFT // 2:
        # reflect padding of n_fft/2 needs more samples than the pad
        raise UserError(f"audio too short: {wave.shape[-1]} samples at 16 kHz; need more than {N_FFT // 2}")
    return normalize_db(amp_to_db(linear_to_mel(stft_magnitude(wave))))


def _as_wave(wave: np.ndarray, name: str) -> torch.Tensor:
    arr = np.asarray(wave)
    if arr.ndim != 1:
        raise UserError(f"{name} expects a 1-D mono waveform, got shape {arr.shape}; down-mix first (load_audio)")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def utterance_mel(wave_16k: np.ndarray) -> np.ndarray:
    """Test-time mel of a whole utterance (spec §3.2): (S,) at 16 kHz -> float32 (80, S // 200 + 1)."""
    with torch.no_grad():
        return mel_torch(_as_wave(wave_16k, "utterance_mel")).numpy()


def chunk_mel(chunk_3200: np.ndarray, quirks: Quirks | None = None) -> np.ndarray:
    """Training-chunk mel (spec §3.2): (3200,) -> float32 (80, 16), the 17th STFT frame dropped.

    With ``Quirks(train_chunk_drop_last_frame=False)`` all 17 frames are returned, (80, 17), for analysis
    only (the models take 16 columns). A centre=False STFT is no alternative: it yields 13 frames.
    """
    chunk = _as_wave(chunk_3200, "chunk_mel")
    if chunk.shape[0] != WINDOW_SAMPLES:
        raise UserError(f"chunk_mel expects {WINDOW_SAMPLES} samples (5 frames at 16 kHz), got {chunk.shape[0]}")
    with torch.no_grad():
        return chunk_mel_torch(chunk[None], quirks)[0, 0].numpy()


def chunk_mel_torch(chunks: torch.Tensor, quirks: Quirks | None = None) -> torch.Tensor:
    """Batched training-chunk mel for the trainer, on the chunks' device and dtype: (B, 3200) -> (B, 1, 80, 16).

    Computes exactly what ``chunk_mel`` computes (same torch code path), so the two agree to float precision.
    """
    quirks = quirks or Quirks()
    if chunks.ndim != 2 or chunks.shape[1] != WINDOW_SAMPLES:
        raise UserError(f"chunk_mel_torch expects (B, {WINDOW_SAMPLES}) waveforms, got {tuple(chunks.shape)}")
    if not chunks.is_floating_point():
        raise UserError(f"chunk_mel_torch expects float waveforms in [-1, 1], got dtype {chunks.dtype}")
    mel = mel_torch(chunks)  # (B, 80, 17)
    if quirks.train_chunk_drop_last_frame:
        mel = mel[..., :MEL_WINDOW]
    return mel.unsqueeze(1)


def mel_window(mel: np.ndarray, v: int) -> np.ndarray:
    """The (80, 16) test-time window of video frame v from an utterance mel (80, M)."""
    start = mel_window_start(v)
    if start + MEL_WINDOW > mel.shape[-1]:
        raise UserError(f"mel window of frame {v} needs columns up to {start + MEL_WINDOW}; mel has {mel.shape[-1]}")
    return mel[..., start : start + MEL_WINDOW]

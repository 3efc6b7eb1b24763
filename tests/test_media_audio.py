"""mtdistill.audio: the official mel recipe (design.md §3.2) and load_audio on real encoded files."""

from __future__ import annotations

import av
import librosa
import numpy as np
import pytest
import torch

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import Quirks
from mtdistill.media import audio
from mtdistill.media.testmedia import tone, write_audio, write_video


def reference_mel(wave: np.ndarray) -> np.ndarray:
    """An independent float64 numpy implementation of design.md §3.2 (np.fft, explicit reflect pad)."""
    x = np.pad(wave.astype(np.float64), (400, 400), mode="reflect")
    n_frames = 1 + (len(x) - 800) // 200
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(800) / 800)  # periodic Hann
    frames = np.stack([x[i * 200 : i * 200 + 800] * win for i in range(n_frames)], axis=1)
    mag = np.abs(np.fft.rfft(frames, axis=0))
    fb = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600).astype(np.float64)
    s_db = 20 * np.log10(np.maximum(fb @ mag, 1e-5)) - 20
    return np.clip(8 * (s_db + 100) / 100 - 4, -4, 4)


@pytest.fixture(scope="module")
def speechlike() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    x = env * (0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1500 * t)) + 0.02 * rng.normal(size=t.size)
    return x.astype(np.float32)


# ------------------------------------------------------------------------------------------- the recipe


@pytest.mark.parametrize("n", [401, 3200, 3399, 16000, 16199])
def test_utterance_mel_has_s_div_200_plus_1_frames(n: int) -> None:
    mel = audio.utterance_mel(np.zeros(n, np.float32) + 0.01)
    assert mel.shape == (80, n // 200 + 1)
    assert mel.dtype == np.float32


def test_recipe_matches_independent_numpy_reference(speechlike: np.ndarray) -> None:
    ours = audio.utterance_mel(speechlike)
    ref = reference_mel(speechlike)
    assert ours.shape == ref.shape
    assert float(np.abs(ours - ref).max()) < 2e-3  # float32 torch.stft vs float64 numpy
    assert ours.min() >= -4.0 and ours.max() <= 4.0
    assert ours.max() > 0.0  # a loud signal reaches the upper part of the range


def test_silence_is_minus_four() -> None:
    assert np.all(audio.utterance_mel(np.zeros(3200, np.float32)) == -4.0)


def test_filterbank_equals_librosa_slaney() -> None:
    assert audio.MEL_BASIS_FILE.is_file()  # the packaged copy (saves the librosa import at run time) ...
    fb = audio.mel_basis()  # ... is exactly librosa's
    ref = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600, norm="slaney", htk=False)
    assert fb.shape == (80, 401)
    np.testing.assert_array_equal(fb, ref)
    # Slaney, not HTK: the first filter starts at 55 Hz (bin 2.75) and nothing reaches above 7600 Hz (bin 380)
    assert np.all(fb[:, 381:] == 0)
    assert fb[0, 2] == 0 and fb[0, 3] > 0


def test_db_and_normalisation_on_hand_values() -> None:
    mel = torch.tensor([1e-7, 1e-5, 1e-4, 1e-3, 1.0, 10.0, 100.0], dtype=torch.float64)
    s_db = audio.amp_to_db(mel)
    np.testing.assert_allclose(s_db.numpy(), [-120, -120, -100, -80, -20, 0, 20], atol=1e-9)
    m = audio.normalize_db(s_db)
    # M = clip(8 (S_dB + 100) / 100 - 4, -4, 4)
    np.testing.assert_allclose(m.numpy(), [-4, -4, -4, -2.4, 2.4, 4.0, 4.0], atol=1e-9)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 4000.0])
def test_pure_tone_lands_in_the_right_mel_bin(freq: float) -> None:
    x = tone(16000, 16000, freq)[0]
    mel = audio.utterance_mel(x)
    centres = librosa.mel_frequencies(n_mels=82, fmin=55, fmax=7600, htk=False)[1:-1]
    expected = int(np.argmin(np.abs(centres - freq)))
    peak = np.bincount(mel[:, 5:-5].argmax(axis=0)).argmax()
    assert abs(int(peak) - expected) <= 1


def test_chunk_mel_is_16_frames_and_drops_the_17th(speechlike: np.ndarray) -> None:
    chunk = speechlike[6400:9600]
    full = audio.mel_torch(torch.from_numpy(chunk)).numpy()
    assert full.shape == (80, 17)
    cm = audio.chunk_mel(chunk)
    assert cm.shape == (80, 16)
    np.testing.assert_array_equal(cm, full[:, :16])
    kept = audio.chunk_mel(chunk, Quirks(train_chunk_drop_last_frame=False))
    assert kept.shape == (80, 17)


@pytest.mark.parametrize("v", [0, 5, 10, 20])
def test_chunk_equals_utterance_slice_interior_when_v_divisible_by_5(speechlike: np.ndarray, v: int) -> None:
    utt = audio.utterance_mel(speechlike)
    start = audio.mel_window_start(v)
    cm = audio.chunk_mel(speechlike[640 * v : 640 * v + 3200])
    window = utt[:, start : start + 16]
    # interior columns 2..14 see no padding in either computation: exactly equal
    np.testing.assert_allclose(cm[:, 2:15], window[:, 2:15], atol=1e-5)
    if v > 0:  # at the chunk edges reflect padding differs from the real neighbouring samples
        assert np.abs(cm[:, 0] - window[:, 0]).max() > 1e-3


def test_chunk_differs_from_slice_when_v_not_divisible_by_5(speechlike: np.ndarray) -> None:
    utt = audio.utterance_mel(speechlike)
    v = 7  # 640 * 7 = 4480 is not a multiple of 200: the test slice starts 80 samples early
    cm = audio.chunk_mel(speechlike[640 * v : 640 * v + 3200])
    window = audio.mel_window(utt, v)
    assert np.abs(cm[:, 2:15] - window[:, 2:15]).max() > 1e-2


def test_chunk_mel_torch_batched_equals_numpy_path(speechlike: np.ndarray) -> None:
    starts = [0, 640, 3200, 9000]
    batch = torch.from_numpy(np.stack([speechlike[s : s + 3200] for s in starts]))
    out = audio.chunk_mel_torch(batch)
    assert out.shape == (4, 1, 80, 16)
    for i, s in enumerate(starts):
        np.testing.assert_allclose(out[i, 0].numpy(), audio.chunk_mel(speechlike[s : s + 3200]), atol=1e-5)
    out64 = audio.chunk_mel_torch(batch.double())
    assert out64.dtype == torch.float64
    np.testing.assert_allclose(out64.numpy(), out.numpy(), atol=1e-3)


def test_mel_window_start_is_integer_floor_of_3_2_v() -> None:
    assert [audio.mel_window_start(v) for v in range(11)] == [0, 3, 6, 9, 12, 16, 19, 22, 25, 28, 32]
    for v in range(0, 20000, 7):
        assert audio.mel_window_start(v) == int(80 * v / 25) == (16 * v) // 5


def test_recipe_input_errors() -> None:
    with pytest.raises(UserError, match="3200 samples"):
        audio.chunk_mel(np.zeros(3000, np.float32))
    with pytest.raises(UserError, match="1-D mono"):
        audio.utterance_mel(np.zeros((2, 16000), np.float32))
    with pytest.raises(UserError, match="too short"):
        audio.utterance_mel(np.zeros(300, np.float32))
    with pytest.raises(UserError, match=r"\(B, 3200\)"):
        audio.chunk_mel_torch(torch.zeros(2, 3000))
    with pytest.raises(UserError, match="needs columns"):
        audio.mel_window(np.zeros((80, 20), np.float32), 5)


# ------------------------------------------------------------------------------------------- load_audio


def dominant_freq(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * sr / len(x))


def test_wav_16k_mono_round_trip(tmp_path) -> None:
    x = tone(16000, 16000, 440.0)
    write_audio(tmp_path / "a.wav", x, 16000)
    y = audio.load_audio(tmp_path / "a.wav")
    assert y.dtype == np.float32 and y.shape == (16000,)
    np.testing.assert_allclose(y, x[0], atol=1 / 32768 + 1e-6)


def test_stereo_is_downmixed_by_channel_mean(tmp_path) -> None:
    x = tone(8000, 16000, 440.0, channels=2)  # L 440 Hz, R 880 Hz
    write_audio(tmp_path / "s.wav", x, 16000)
    y = audio.load_audio(tmp_path / "s.wav")
    np.testing.assert_allclose(y, x.mean(axis=0), atol=1 / 32768 + 1e-6)


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 32000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_any_rate_is_resampled_to_16k(tmp_path, rate: int, channels: int) -> None:
    x = tone(rate, rate, 440.0, channels=channels)  # 1 s
    write_audio(tmp_path / "r.wav", x, rate)
    y = audio.load_audio(tmp_path / "r.wav")
    assert abs(len(y) - 16000) <= 1
    assert abs(dominant_freq(y, 16000) - 440.0) <= 2.0
    if channels == 1:  # amplitude kept (0.3) away from the edges
        assert abs(float(np.abs(y[2000:-2000]).max()) - 0.3) < 0.01


def test_resampler_is_band_limited(tmp_path) -> None:
    # 48 kHz -> 16 kHz: 7 kHz is below the new Nyquist and must stay; 11 kHz must be filtered, not aliased to 5 kHz
    t = np.arange(48000) / 48000
    write_audio(tmp_path / "k.wav", (0.3 * np.sin(2 * np.pi * 7000 * t))[None].astype(np.float32), 48000)
    write_audio(tmp_path / "h.wav", (0.3 * np.sin(2 * np.pi * 11000 * t))[None].astype(np.float32), 48000)
    kept = audio.load_audio(tmp_path / "k.wav")
    gone = audio.load_audio(tmp_path / "h.wav")
    assert abs(float(np.abs(kept[2000:-2000]).max()) - 0.3) < 0.02
    assert float(np.abs(gone[2000:-2000]).max()) < 0.01


CODECS = [("flac", "flac", None), ("mp3", "libmp3lame", None), ("m4a", "aac", "mp4"), ("mkv", "libopus", "matroska")]


@pytest.mark.parametrize(("ext", "codec", "fmt"), CODECS)
def test_compressed_formats_decode(tmp_path, ext: str, codec: str, fmt: str | None) -> None:
    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg build has no {codec} encoder")
    rate = 48000 if codec == "libopus" else 44100
    write_audio(tmp_path / f"a.{ext}", tone(rate, rate, 440.0, channels=2), rate, codec=codec, container_format=fmt)
    y = audio.load_audio(tmp_path / f"a.{ext}")
    assert abs(len(y) - 16000) < 1200  # codec priming/padding only
    assert abs(dominant_freq(y, 16000) - 440.0) <= 2.0


def test_mp4_audio_stays_aligned_with_the_timeline(tmp_path) -> None:
    # a 2 kHz burst at exactly 1.000 s; AAC priming must be skipped, not left as a delay
    sr = 44100
    x = np.zeros((1, 2 * sr), np.float32)
    n0 = sr
    x[0, n0 : n0 + 441] = 0.5 * np.sin(2 * np.pi * 2000 * np.arange(441) / sr)
    write_video(
        tmp_path / "v.mp4", 50, 25, (64, 48), frame_fn=lambda i: np.zeros((48, 64, 3), np.uint8), audio=x, sr=sr
    )
    y = audio.load_audio(tmp_path / "v.mp4")
    onset = int(np.argmax(np.abs(y) > 0.1))
    assert abs(onset - 16000) <= 16  # within 1 ms


def test_video_without_audio_is_a_user_error(tmp_path) -> None:
    write_video(tmp_path / "silent.mp4", 10, 25, (64, 48))
    with pytest.raises(UserError, match="no audio stream"):
        audio.load_audio(tmp_path / "silent.mp4")


def test_bad_files_are_user_errors(tmp_path) -> None:
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        audio.load_audio(tmp_path / "empty.wav")
    (tmp_path / "text.wav").write_text("this is not audio\n" * 20)
    with pytest.raises(UserError, match="cannot read"):
        audio.load_audio(tmp_path / "text.wav")
    with pytest.raises(UserError, match="not found"):
        audio.load_audio(tmp_path / "missing.wav")

"""Speech-like audio from a source-filter model, with the articulation that drives the rendered mouth.

A random syllable script (consonant + vowel, grouped into words separated by pauses) is turned into
control tracks at 1 kHz: voicing and noise amplitudes, pitch, three formants, jaw opening and lip width.
The source (glottal pulse train with jitter + aspiration / frication noise) is passed through
time-varying formant resonators. The jaw and lip tracks are what the renderer draws, so the lower
half of the face carries the same timing as the sound: that is what makes sync learnable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from mtdistill.core.timing import SAMPLE_RATE

CONTROL_RATE = 1000  # control tracks are sampled every 1 ms, then held per 5 ms synthesis block
BLOCK = 80  # samples per synthesis block (5 ms): formants are constant within a block

# vowel -> (F1, F2, F3 in Hz for a reference speaker, jaw opening 0..1, lip width -1 rounded .. +1 spread)
VOWELS: dict[str, tuple[float, float, float, float, float]] = {
    "a": (750.0, 1250.0, 2600.0, 1.00, 0.25),
    "e": (500.0, 1850.0, 2600.0, 0.60, 0.65),
    "i": (300.0, 2250.0, 2950.0, 0.30, 1.00),
    "o": (520.0, 900.0, 2500.0, 0.70, -0.65),
    "u": (320.0, 800.0, 2400.0, 0.32, -1.00),
}

# consonant -> (kind, jaw opening during it, lip width); bilabials close the lips, which is very visible
CONSONANTS: dict[str, tuple[str, float, float]] = {
    "p": ("plosive", 0.0, 0.0),
    "b": ("voiced_plosive", 0.0, 0.0),
    "m": ("nasal", 0.0, 0.0),
    "t": ("plosive", 0.15, 0.3),
    "d": ("voiced_plosive", 0.15, 0.3),
    "s": ("fricative", 0.12, 0.6),
    "f": ("fricative", 0.08, 0.2),
    "n": ("nasal", 0.15, 0.3),
    "w": ("glide", 0.15, -0.9),
    "": ("none", 0.0, 0.0),
}


@dataclass(frozen=True)
class Voice:
    """Per-speaker constants."""

    f0: float = 140.0  # mean pitch, Hz
    formant_scale: float = 1.0  # vocal-tract length (shorter tract -> higher formants)
    rate: float = 1.0  # speaking-rate factor (> 1: faster)
    loudness: float = 0.5  # peak amplitude of the voiced parts
    noise_floor: float = 0.002  # background noise RMS (kept below the sampler's 0.01 silence threshold)

    @classmethod
    def random(cls, rng: np.random.Generator) -> Voice:
        return cls(
            f0=float(rng.uniform(90.0, 230.0)),
            formant_scale=float(rng.uniform(0.9, 1.15)),
            rate=float(rng.uniform(0.85, 1.2)),
            loudness=float(rng.uniform(0.3, 0.7)),
            noise_floor=float(rng.uniform(0.0005, 0.004)),
        )


@dataclass
class Articulation:
    """Control tracks at CONTROL_RATE (1 kHz): everything the synthesizer and the renderer need."""

    voiced: np.ndarray  # voiced amplitude 0..1
    noise: np.ndarray  # frication / burst amplitude 0..1
    noise_kind: np.ndarray  # 0 = none, 1 = s-like (high band), 2 = f/burst-like (broad)
    f0_scale: np.ndarray  # pitch contour relative to Voice.f0
    formants: np.ndarray  # (3, T) Hz for the reference speaker
    jaw: np.ndarray  # mouth opening 0..1
    width: np.ndarray  # lip width -1..1

    @property
    def n(self) -> int:
        return int(self.voiced.shape[0])


def _ms(x: float) -> int:
    return max(1, int(round(x)))


def random_articulation(rng: np.random.Generator, duration_s: float, voice: Voice) -> Articulation:
    """A random script of words and pauses rendered into smooth 1 kHz control tracks."""
    n = int(np.ceil(duration_s * CONTROL_RATE))
    voiced = np.zeros(n, np.float32)
    noise = np.zeros(n, np.float32)
    kind = np.zeros(n, np.int8)
    formants = np.zeros((3, n), np.float32)
    jaw = np.zeros(n, np.float32)
    width = np.zeros(n, np.float32)
    vowel_names = list(VOWELS)
    cons_names = list(CONSONANTS)
    # neutral formants for pauses so the filter never sees zeros
    formants[:] = np.array([500.0, 1500.0, 2500.0], np.float32)[:, None]

    t = _ms(rng.uniform(0, 300))  # an initial pause of random length
    while t < n:
        n_syll = int(rng.integers(1, 4))
        for _ in range(n_syll):
            c = cons_names[int(rng.integers(len(cons_names)))]
            v = vowel_names[int(rng.integers(len(vowel_names)))]
            c_kind, c_jaw, c_width = CONSONANTS[c]
            f1, f2, f3, v_jaw, v_width = VOWELS[v]
            c_len = _ms(rng.uniform(40, 110) / voice.rate) if c_kind != "none" else 0
            v_len = _ms(rng.uniform(90, 260) / voice.rate)
            stress = float(rng.uniform(0.55, 1.0))
            # consonant
            a, b = t, min(n, t + c_len)
            if b > a:
                jaw[a:b] = c_jaw
                width[a:b] = c_width
                formants[:, a:b] = np.array([f1 * 0.6, f2, f3], np.float32)[:, None]
                if c_kind == "fricative":
                    noise[a:b] = 0.35 * stress
                    kind[a:b] = 1 if c == "s" else 2
                elif c_kind in ("plosive", "voiced_plosive"):
                    burst = min(b, a + max(1, (b - a) // 3))
                    noise[burst : min(b, burst + 15)] = 0.6 * stress  # release burst after a closure
                    kind[burst : min(b, burst + 15)] = 2
                    if c_kind == "voiced_plosive":
                        voiced[burst:b] = 0.3 * stress
                elif c_kind == "nasal":
                    voiced[a:b] = 0.25 * stress
                    formants[:, a:b] = np.array([280.0, 1300.0, 2500.0], np.float32)[:, None]
                elif c_kind == "glide":
                    voiced[a:b] = 0.4 * stress
                    formants[:, a:b] = np.array([320.0, 750.0, 2300.0], np.float32)[:, None]
            t = b
            # vowel with a syllable envelope (rise, hold, fall)
            a, b = t, min(n, t + v_len)
            if b > a:
                m = b - a
                env = np.sin(np.linspace(0.15, np.pi - 0.15, m)) ** 0.6
                voiced[a:b] = stress * env
                jaw[a:b] = v_jaw * (0.35 + 0.65 * env) * stress
                width[a:b] = v_width
                formants[:, a:b] = np.array([f1, f2, f3], np.float32)[:, None]
            t = b
        t += _ms(rng.uniform(120, 550) / voice.rate)  # pause between words

    # smooth everything: articulators and formants move continuously
    def smooth(x: np.ndarray, ms: int) -> np.ndarray:
        k = np.hanning(ms + 2)[1:-1]
        k /= k.sum()
        return np.convolve(np.pad(x, (ms, ms), mode="edge"), k, mode="same")[ms:-ms].astype(np.float32)

    voiced = smooth(voiced, 15)
    noise = smooth(noise, 5)
    jaw = np.clip(smooth(jaw, 30), 0.0, 1.0)
    width = np.clip(smooth(width, 40), -1.0, 1.0)
    formants = np.stack([smooth(f, 25) for f in formants])
    # declining pitch with slow wander per phrase
    tt = np.arange(n) / CONTROL_RATE
    wander = np.cumsum(rng.normal(0, 1, n)) / np.sqrt(CONTROL_RATE) * 0.02
    f0_scale = (1.1 - 0.15 * (tt % 2.5) / 2.5 + wander + 0.1 * voiced).astype(np.float32)
    return Articulation(voiced, noise, kind, np.clip(f0_scale, 0.6, 1.6), formants, jaw, width)


def _resonator_coeffs(freq: float, bw: float) -> tuple[np.ndarray, np.ndarray]:
    """Two-pole resonator with unit gain at DC (Klatt-style)."""
    r = np.exp(-np.pi * bw / SAMPLE_RATE)
    c = -(r**2)
    b = 2 * r * np.cos(2 * np.pi * freq / SAMPLE_RATE)
    a_gain = 1 - b - c
    return np.array([a_gain]), np.array([1.0, -b, -c])


def synthesize(art: Articulation, voice: Voice, rng: np.random.Generator) -> np.ndarray:
    """Render control tracks to a float32 waveform at 16 kHz in [-1, 1]."""
    n_samples = art.n * SAMPLE_RATE // CONTROL_RATE
    up = SAMPLE_RATE // CONTROL_RATE
    voiced = np.repeat(art.voiced, up)[:n_samples]
    noise_amp = np.repeat(art.noise, up)[:n_samples]
    kind = np.repeat(art.noise_kind, up)[:n_samples]
    f0 = voice.f0 * np.repeat(art.f0_scale, up)[:n_samples]
    f0 = f0 * (1 + rng.normal(0, 0.01, n_samples).cumsum() / np.sqrt(n_samples) * 0.5)  # slow jitter

    # glottal source: one pulse per period, with a spectral tilt of about -12 dB/octave
    phase = np.cumsum(f0 / SAMPLE_RATE)
    pulses = np.diff(np.floor(phase), prepend=0.0).astype(np.float64)
    glottal = lfilter([1.0], [1.0, -1.9, 0.9025], pulses)  # double pole at 0.95: smooth glottal flow
    glottal = np.diff(glottal, prepend=0.0)  # radiation at the lips (first difference)
    glottal /= np.max(np.abs(glottal)) + 1e-9
    aspiration = rng.normal(0, 0.04, n_samples)
    source = voiced * (glottal + aspiration * voiced)

    # time-varying cascade of three formant resonators, blockwise with carried filter state
    out = np.zeros(n_samples)
    zi = [np.zeros(2) for _ in range(3)]
    bws = (80.0, 110.0, 160.0)
    for start in range(0, n_samples, BLOCK):
        stop = min(n_samples, start + BLOCK)
        ci = min(art.n - 1, start // up)
        x = source[start:stop]
        for k in range(3):
            b, a = _resonator_coeffs(float(art.formants[k, ci]) * voice.formant_scale, bws[k])
            x, zi[k] = lfilter(b, a, x, zi=zi[k])
        out[start:stop] = x
    out /= np.max(np.abs(out)) + 1e-9

    # frication: white noise shaped by the consonant kind
    white = rng.normal(0, 1, n_samples)
    hiss = lfilter(*_highpass(4000.0), white)
    broad = lfilter(*_highpass(1200.0), white)
    fric = np.where(kind == 1, hiss, broad) * noise_amp * 0.5

    wave = voice.loudness * (out + fric) + rng.normal(0, voice.noise_floor, n_samples)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def _highpass(fc: float) -> tuple[np.ndarray, np.ndarray]:
    """One-pole/one-zero high-pass (cheap, deterministic, no design routines)."""
    a = np.exp(-2 * np.pi * fc / SAMPLE_RATE)
    return np.array([(1 + a) / 2, -(1 + a) / 2]), np.array([1.0, -a])


def frame_track(track: np.ndarray, n_frames: int, fps: float, start_ms: float = 0.0) -> np.ndarray:
    """Mean of a 1 kHz control track over each video frame's interval (start_ms shifts the timeline)."""
    edges = start_ms + np.arange(n_frames + 1) * 1000.0 / fps
    idx = np.clip(np.round(edges).astype(int), 0, track.shape[0])
    csum = np.concatenate([[0.0], np.cumsum(track, dtype=np.float64)])
    lengths = np.maximum(idx[1:] - idx[:-1], 1)
    return ((csum[idx[1:]] - csum[idx[:-1]]) / lengths).astype(np.float32)

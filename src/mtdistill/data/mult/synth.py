"""A synthetic CMU-MOSEI look-alike written in MulT's pickle layout (see data/mosei.py).

Every sample has three latent factors u_l, u_a, u_v ~ N(0, 1) and a sentiment
``y = w_l u_l + w_a u_a + w_v u_v + bias + noise`` quantised to thirds (annotator averages) and clipped to [-3, 3].
- text: "words" at sparse positions carry u_l along a fixed direction, the rest is noise; left zero padding;
- audio: a slowly varying envelope times u_a along a fixed direction, plus per-word bursts aligned with the text;
- vision: u_v along its own direction, plus *weak, noisy* traces of u_l and u_a at the aligned times.
So the label needs all three modalities: a video-only model can recover part of it from the weak traces, and a
teacher that sees text and audio knows where (and how) to look; that is what distillation can pass on.
Lengths and feature sizes are settings so CPU demos can use short sequences; the layout stays MulT's.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mtdistill.core.errors import UserError
from mtdistill.data.mult.mosei import MULT_FILE


@dataclass(frozen=True)
class SynthMoseiConfig:
    n_train: int = 1600
    n_valid: int = 300
    n_test: int = 500
    lengths: tuple[int, int, int] = (50, 500, 500)  # (text, audio, vision), MulT's unaligned lengths
    dims: tuple[int, int, int] = (300, 74, 35)  # GloVe, COVAREP, Facet sizes
    weights: tuple[float, float, float] = (1.0, 0.8, 0.5)  # contribution of u_l, u_a, u_v to the sentiment
    bias: float = 0.3  # MOSEI leans positive
    label_noise: float = 0.25
    video_trace: float = 0.15  # strength of the text / audio traces in the video stream (0 = video knows only u_v)
    feature_noise: float = 1.0
    min_fill: float = 0.5  # shortest real part of a sequence, as a fraction of its length (rest is left padding)
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.n_train, self.n_valid, self.n_test) < 1:
            raise UserError("every split needs at least one sample; raise --n-train/--n-valid/--n-test")
        if min(self.lengths) < 2 or min(self.dims) < 1:
            raise UserError(f"lengths {self.lengths} and dims {self.dims} must be >= 2 and >= 1")
        if not 0.0 < self.min_fill <= 1.0:
            raise UserError(f"min_fill={self.min_fill} must be in (0, 1]")


def _unit(rng: np.random.Generator, d: int) -> np.ndarray:
    v = rng.standard_normal(d)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _split(cfg: SynthMoseiConfig, n: int, dirs: dict[str, np.ndarray], rng: np.random.Generator) -> dict:
    tl, ta, tv = cfg.lengths
    dl, da, dv = cfg.dims
    u = rng.standard_normal((n, 3)).astype(np.float32)  # u_l, u_a, u_v
    y = u @ np.asarray(cfg.weights, dtype=np.float32) + cfg.bias + cfg.label_noise * rng.standard_normal(n)
    y = np.clip(np.round(y * 3.0) / 3.0, -3.0, 3.0).astype(np.float32)

    # real (unpadded) length as a fraction of each sequence; the same fraction in every modality keeps them aligned
    fill = rng.uniform(cfg.min_fill, 1.0, size=n)
    noise = cfg.feature_noise

    text = (0.3 * noise * rng.standard_normal((n, tl, dl))).astype(np.float32)
    words = rng.random((n, tl)) < 0.3  # sentiment-bearing words
    text += words[..., None] * u[:, None, 0:1] * dirs["l"][None, None, :] * 3.0
    # audio: envelope * u_a plus bursts at the word times (mapped to the audio clock)
    t_a = np.linspace(0, 1, ta, dtype=np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1)).astype(np.float32)
    env = 1.0 + 0.5 * np.sin(2 * np.pi * 3 * t_a[None, :] + phase)
    audio = (noise * rng.standard_normal((n, ta, da))).astype(np.float32)
    audio += (env * u[:, 1:2])[..., None] * dirs["a"][None, None, :] * 1.5
    word_at_a = words[:, np.minimum((np.arange(ta) * tl) // ta, tl - 1)]
    audio += word_at_a[..., None] * dirs["a2"][None, None, :] * 1.0
    # vision: its own factor plus weak traces of u_l (at word times) and u_a (through the envelope)
    vision = (noise * rng.standard_normal((n, tv, dv))).astype(np.float32)
    vision += u[:, None, 2:3] * dirs["v"][None, None, :] * 1.2
    word_at_v = words[:, np.minimum((np.arange(tv) * tl) // tv, tl - 1)]
    vision += cfg.video_trace * word_at_v[..., None] * u[:, None, 0:1] * dirs["vl"][None, None, :] * 3.0
    env_v = env[:, np.minimum((np.arange(tv) * ta) // tv, ta - 1)]
    vision += cfg.video_trace * (env_v * u[:, 1:2])[..., None] * dirs["va"][None, None, :] * 1.5

    # left zero padding (MulT issue #3): the first T - round(fill*T) steps are exactly 0
    for arr, t in ((text, tl), (audio, ta), (vision, tv)):
        pad = t - np.maximum(1, np.round(fill * t).astype(int))
        arr[np.arange(t)[None, :] < pad[:, None]] = 0.0
    audio[rng.random(audio.shape) < 1e-4] = -np.inf  # COVAREP-like -inf holes the reader must zero
    ids = np.array([[f"synth{i:06d}", "0", "1"] for i in range(n)], dtype=object)
    return {"text": text, "audio": audio, "vision": vision, "labels": y.reshape(n, 1, 1), "id": ids}


def generate(cfg: SynthMoseiConfig) -> dict[str, dict]:
    """All three splits as a MulT-layout dict (the same fixed directions for every split)."""
    rng = np.random.default_rng(cfg.seed)
    dl, da, dv = cfg.dims
    dirs = {
        "l": _unit(rng, dl),
        "a": _unit(rng, da),
        "a2": _unit(rng, da),
        "v": _unit(rng, dv),
        "vl": _unit(rng, dv),
        "va": _unit(rng, dv),
    }
    sizes = {"train": cfg.n_train, "valid": cfg.n_valid, "test": cfg.n_test}
    return {
        name: _split(cfg, n, dirs, np.random.default_rng([cfg.seed, i + 1]))
        for i, (name, n) in enumerate(sizes.items())
    }


def write_synthetic_mosei(out: str | Path, cfg: SynthMoseiConfig | None = None) -> Path:
    """Write ``OUT/mosei_senti_data_noalign.pkl`` (+ ``synth_config.json``); returns the pickle path."""
    import json

    cfg = cfg or SynthMoseiConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / MULT_FILE
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        pickle.dump(generate(cfg), fh, protocol=4)
    tmp.replace(path)  # atomic: a half-written pickle never carries the final name
    (out / "synth_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return path

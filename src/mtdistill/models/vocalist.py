"""VocaLiST (teacher) and MTDVocaLiST (student): one class, two sizes (design.md §1-2).

    video (B, 3*T, 48, 96) --vid_prenet (17 Conv3d blocks)--> T video tokens ---+
    mel   (B, 1, 80, 16*T/5) --aud_prenet (14 Conv2d blocks)--> 16T/5 audio tokens+
        av  = av_transformer(query=audio, key/value=video)      (Ta, B, d)
        va  = va_transformer(query=video, key/value=audio)      (Tv, B, d)   <- the only masked block
        out = mem_transformer(query=av, key/value=va)           (Ta, B, d)   ("fusion")
        logit = classifier(tanh(fc(max over time(out))))        (B,)

State-dict keys and shapes are those of the official checkpoints, so ``load_state_dict(strict=True)`` works.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import Quirks
from mtdistill.core.safeio import safe_torch_load
from mtdistill.models.presets import PRESETS
from mtdistill.models.weights import METADATA_KEY, read_weights, save_weights
from mtdistill.nn.crossmodal import CrossModalEncoder

FORMAT = "mtdistill-vocalist/1"
BLOCKS = ("av", "va", "fusion")
_BLOCK_ATTR = {"av": "av_transformer", "va": "va_transformer", "fusion": "mem_transformer"}


@dataclass(frozen=True)
class VocaLiSTConfig:
    d_model: int = 512
    widths: tuple[int, ...] = (32, 64, 128, 256, 512)  # conv widths; the last must equal d_model
    heads: int = 8
    layers: int = 4
    ffn_mult: int = 4
    embed_dropout: float = 0.25
    attn_dropout: float = 0.0
    relu_dropout: float = 0.1
    res_dropout: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if len(self.widths) != 5 or self.widths[-1] != self.d_model:
            raise UserError(f"widths must be 5 conv widths ending in d_model={self.d_model}, got {self.widths}")


TEACHER = VocaLiSTConfig()
STUDENT = VocaLiSTConfig(d_model=200, widths=(16, 32, 64, 128, 200))
TINY = VocaLiSTConfig(d_model=32, widths=(4, 8, 8, 16, 32))


@dataclass
class SyncOutput:
    """Logits plus the behaviour the distillation losses need (batch-first, per head, per layer)."""

    logits: Tensor  # (B,)
    attention_logits: dict[str, list[Tensor]] = field(default_factory=dict)  # (B, H, Tq, Tk)
    values: dict[str, list[Tensor]] = field(default_factory=dict)  # (B, H, Tk, hd)
    hidden: dict[str, list[Tensor]] = field(default_factory=dict)  # (B, Tq, d)
    queries: dict[str, list[Tensor]] = field(default_factory=dict)  # (B, H, Tq, hd), scaled
    keys: dict[str, list[Tensor]] = field(default_factory=dict)  # (B, H, Tk, hd)
    pooled: Tensor | None = None  # (B, d): tanh(fc(max-pool)), the classifier's input
    tokens: dict[str, Tensor] = field(default_factory=dict)  # {"video": (B, Tv, d), "audio": (B, Ta, d)}


class ConvBlock(nn.Module):
    """out = ReLU(BN(conv(x)) [+ x]) - the Wav2Lip-style block (names: conv_block.0 / conv_block.1)."""

    def __init__(self, conv: nn.Module, bn: nn.Module, residual: bool) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(conv, bn)
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_block(x)
        return self.act(out + x if self.residual else out)


# (cin index, cout index, kernel, stride, padding, residual); index -1 = input channels, i = widths[i]
# Conv3d axes are (image H, image W, time): time is never strided, so one token per frame (design.md §1.3).
# fmt: off
_VIDEO_LAYERS = [
    (-1, 0, 7, 1, 3, False), (0, 1, 5, (1, 2, 1), (1, 1, 2), False), (1, 1, 3, 1, 1, True), (1, 1, 3, 1, 1, True),
    (1, 2, 3, (2, 2, 1), 1, False), (2, 2, 3, 1, 1, True), (2, 2, 3, 1, 1, True), (2, 2, 3, 1, 1, True),
    (2, 3, 3, (2, 2, 1), 1, False), (3, 3, 3, 1, 1, True), (3, 3, 3, 1, 1, True),
    (3, 4, 3, (2, 2, 1), 1, False), (4, 4, 3, 1, 1, True), (4, 4, 3, 1, 1, True),
    (4, 4, 3, (2, 2, 1), 1, False), (4, 4, 3, 1, (0, 0, 1), False), (4, 4, 1, 1, 0, False),
]
# Conv2d axes are (mel bin, time): frequency is reduced to 1, time keeps 16 steps.
_AUDIO_LAYERS = [
    (-1, 0, 3, 1, 1, False), (0, 0, 3, 1, 1, True), (0, 0, 3, 1, 1, True),
    (0, 1, 3, (3, 1), 1, False), (1, 1, 3, 1, 1, True), (1, 1, 3, 1, 1, True),
    (1, 2, 3, (3, 1), 1, False), (2, 2, 3, 1, 1, True), (2, 2, 3, 1, 1, True),
    (2, 3, 3, (3, 1), 1, False), (3, 3, 3, 1, 1, True), (3, 3, 3, 1, 1, True),
    (3, 4, 3, 1, (0, 1), False), (4, 4, 1, 1, 0, False),
]
# fmt: on


def _prenet(spec: list, widths: tuple[int, ...], in_ch: int, conv: type, bn: type) -> nn.Sequential:
    chans = lambda i: in_ch if i < 0 else widths[i]  # noqa: E731
    return nn.Sequential(
        *(ConvBlock(conv(chans(ci), chans(co), k, s, p), bn(chans(co)), res) for ci, co, k, s, p, res in spec)
    )


class VocaLiST(nn.Module):
    """The VocaLiST synchronisation model; ``teacher()`` and ``student()`` give the two published sizes."""

    def __init__(
        self, config: VocaLiSTConfig = TEACHER, preset: str | None = None, quirks: Quirks | None = None
    ) -> None:
        super().__init__()
        if preset is not None and preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        self.config, self.preset, self.quirks = config, preset, quirks or Quirks()
        self.vid_prenet = _prenet(_VIDEO_LAYERS, config.widths, 3, nn.Conv3d, nn.BatchNorm3d)
        self.aud_prenet = _prenet(_AUDIO_LAYERS, config.widths, 1, nn.Conv2d, nn.BatchNorm2d)
        for name in _BLOCK_ATTR.values():
            setattr(
                self,
                name,
                CrossModalEncoder(
                    config.d_model,
                    config.heads,
                    config.layers,
                    attn_dropout=config.attn_dropout,
                    relu_dropout=config.relu_dropout,
                    res_dropout=config.res_dropout,
                    embed_dropout=config.embed_dropout,
                    attn_mask=self.quirks.va_future_mask,
                    ffn_mult=config.ffn_mult,
                    data_dependent_pe=self.quirks.data_dependent_pe,
                ),
            )
        # Only va_transformer's mask bites (av/fusion have Tq > Tk, so nothing is masked): see design.md §1.7.
        self.fc = nn.Linear(config.d_model, config.d_model)
        self.activ1 = nn.Tanh()
        self.classifier = nn.Linear(config.d_model, 1)

    # ---- constructors (timm-style uniform) ----
    @classmethod
    def teacher(cls, preset: str | None = "mtd", **kw: Any) -> VocaLiST:
        """VocaLiST: d_model 512, conv widths 32..512, 80,106,561 parameters."""
        return cls(TEACHER, preset, **kw)

    @classmethod
    def student(cls, preset: str | None = "mtd", **kw: Any) -> VocaLiST:
        """MTDVocaLiST: d_model 200, conv widths 16..200, 13,280,961 parameters."""
        return cls(STUDENT, preset, **kw)

    @classmethod
    def tiny(cls, preset: str | None = "mtd", **kw: Any) -> VocaLiST:
        """A very small member of the family (d_model 32) for tests and CPU smoke runs."""
        return cls(TINY, preset, **kw)

    # ---- forward ----
    def encode_video(self, video: Tensor) -> Tensor:
        """(B, 3*T, 48, 96) -> (T, B, d) tokens, one per frame."""
        b, c, h, w = video.shape
        x = video.view(b, c // 3, 3, h, w).permute(0, 2, 3, 4, 1)  # (B, 3, H, W, T): time is the last conv axis
        x = self.vid_prenet(x)
        return x.reshape(b, x.shape[1], -1).permute(2, 0, 1)

    def encode_audio(self, mel: Tensor) -> Tensor:
        """(B, 1, 80, Tm) -> (Tm, B, d) tokens, one per mel frame."""
        x = self.aud_prenet(mel)
        return x.reshape(x.shape[0], x.shape[1], -1).permute(2, 0, 1)

    def backend(self, vid_tokens: Tensor, aud_tokens: Tensor, capture: bool = False) -> Tensor | SyncOutput:
        """Three cross-modal transformers and the head, on time-first tokens."""
        if not capture:
            av = self.av_transformer(aud_tokens, vid_tokens)
            va = self.va_transformer(vid_tokens, aud_tokens)
            fused = self.mem_transformer(av, va)
            return self.classifier(self.activ1(self.fc(fused.amax(dim=0)))).squeeze(-1)
        av, cap_av = self.av_transformer(aud_tokens, vid_tokens, capture=True)
        va, cap_va = self.va_transformer(vid_tokens, aud_tokens, capture=True)
        fused, cap_fu = self.mem_transformer(av, va, capture=True)
        pooled = self.activ1(self.fc(fused.amax(dim=0)))
        caps = {"av": cap_av, "va": cap_va, "fusion": cap_fu}
        return SyncOutput(
            logits=self.classifier(pooled).squeeze(-1),
            attention_logits={k: c.attention_logits for k, c in caps.items()},
            values={k: c.values for k, c in caps.items()},
            hidden={k: c.hidden for k, c in caps.items()},
            queries={k: c.queries for k, c in caps.items()},
            keys={k: c.keys for k, c in caps.items()},
            pooled=pooled,
            tokens={"video": vid_tokens.transpose(0, 1), "audio": aud_tokens.transpose(0, 1)},
        )

    def forward(self, video: Tensor, mel: Tensor, capture: bool = False) -> Tensor | SyncOutput:
        """video (B, 3*T, 48, 96), mel (B, 1, 80, 16*T/5) -> logits (B,) or SyncOutput."""
        return self.backend(self.encode_video(video), self.encode_audio(mel), capture)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ---- checkpoints ----
    def save_checkpoint(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write weights + config + preset + provenance as one safetensors file, atomically."""
        record = {"format": FORMAT, "config": asdict(self.config), "preset": self.preset, "quirks": asdict(self.quirks)}
        return save_weights(self, path, record, extra)

    @classmethod
    def from_checkpoint(cls, path: str | Path, preset: str | None = None) -> VocaLiST:
        """Load our checkpoints or the official VocaLiST / MTDVocaLiST files, strictly, in eval mode.

        The size is inferred from the shapes. Official files carry no preset: pass ``preset`` ("vocalist" for
        vocalist_5f_lrs2.pth, "mtd" for pure_MTDVocaLiST.pth) or the model refuses to turn media into input.
        """
        state, meta = read_checkpoint(path)
        if meta is not None:
            config = VocaLiSTConfig(**meta["config"])
            quirks = Quirks(**meta.get("quirks", {}))
            preset = preset or meta.get("preset")
        else:
            config, quirks = infer_config(state, path), Quirks()
        model = cls(config, preset, quirks=quirks)
        for name in _BLOCK_ATTR.values():  # third-party re-saves sometimes drop the two fairseq buffers
            state.setdefault(f"{name}.version", torch.tensor([2.0]))
            state.setdefault(f"{name}.embed_positions._float_tensor", torch.zeros(1))
        expected = model.state_dict()
        bad = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if bad or missing or unexpected:
            detail = (
                f"{len(missing)} missing (e.g. {missing[:1]}), {len(unexpected)} unexpected "
                f"(e.g. {unexpected[:1]}), {len(bad)} with other shapes (e.g. {bad[:1]})"
            )
            raise UserError(f"{path}: weights fit neither the VocaLiST teacher nor the MTDVocaLiST student: {detail}")
        model.load_state_dict(state, strict=True)
        return model.eval()

    def copy_matching_weights(self, path: str | Path) -> list[str]:
        """Copy every tensor of the checkpoint at ``path`` whose name and shape match this model's; return the names.

        A partial warm start (``model.init_from`` in a recipe): e.g. the front-end convs of a smaller trained model,
        whose early widths are the same, into a wider one. Everything else keeps its random initialisation.
        """
        state, _ = read_checkpoint(path)
        own = self.state_dict()
        names = [k for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)]
        if not [k for k in names if not k.endswith(("num_batches_tracked", ".version", "._float_tensor"))]:
            raise UserError(f"{path}: no weight has the name and shape of this model's; nothing to initialise from")
        with torch.no_grad():
            for k in names:
                own[k].copy_(state[k])
        return names


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Return (state_dict, our metadata or None) from any supported file, with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; give the path of a .safetensors or .pth file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes); download or copy the checkpoint again")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        return _read_safetensors(path)
    obj = safe_torch_load(path)
    if isinstance(obj, dict):
        meta = None
        if isinstance(obj.get(METADATA_KEY), dict):
            meta = obj[METADATA_KEY]
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        if state:
            # DataParallel / DDP / Lightning prefixes
            for prefix in ("module.", "model.", "student."):
                if all(k.startswith(prefix) for k in state):
                    state = {k[len(prefix) :]: v for k, v in state.items()}
            return state, meta
    raise UserError(f"{path}: no model weights found (expected a state_dict or {{'state_dict': ...}})")


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    meta, state = read_weights(path)
    if meta is not None and meta.get("format") != FORMAT:
        raise UserError(f"{path}: checkpoint format {meta.get('format')!r} is not {FORMAT!r}")
    return state, meta


def infer_config(state: dict[str, Tensor], path: str | Path = "checkpoint") -> VocaLiSTConfig:
    """Read d_model and conv widths off the shapes of an official state_dict."""
    try:
        widths = tuple(int(state[f"vid_prenet.{i}.conv_block.0.weight"].shape[0]) for i in (0, 1, 4, 8, 11))
        d_model = int(state["fc.weight"].shape[0])
        ffn = int(state["av_transformer.layers.0.fc1.weight"].shape[0]) // d_model
        layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("av_transformer.layers."))
    except (KeyError, IndexError, ValueError):
        raise UserError(
            f"{path}: not a VocaLiST / MTDVocaLiST state_dict (expected keys such as "
            "vid_prenet.0.conv_block.0.weight and fc.weight)"
        ) from None
    for known in (TEACHER, STUDENT):  # official files come in these two sizes only
        if (widths, d_model, layers, ffn) == (known.widths, known.d_model, known.layers, known.ffn_mult):
            return known
    raise UserError(
        f"{path}: weights fit neither the VocaLiST teacher (d_model 512) nor the MTDVocaLiST student "
        f"(d_model 200): found d_model {d_model}, conv widths {widths}"
    )


def is_vocalist_family(model: nn.Module) -> bool:
    """True when the model exposes encode_video / encode_audio / backend (docs/internal_api.md)."""
    return all(callable(getattr(model, name, None)) for name in ("encode_video", "encode_audio", "backend"))

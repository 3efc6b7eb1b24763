"""MulT (Tsai et al. 2019) as the multimodal teacher of seed paper 002, built on the shared CrossModalEncoder.

    text (B, Tl, 300) --dropout--conv--> L  ---+
    audio (B, Ta, 74) ---------conv--> A  ---+--> 6 cross-modal encoders "la", "lv", "al", "av", "vl", "va"
    vision (B, Tv, 35) --------conv--> V  ---+      (name = query modality + source modality)
    branch m: cat(enc[m s1], enc[m s2]) (T_m, B, 2d) -> memory encoder "m_mem" -> last time step (B, 2d)
    full: last_hs = cat(L, A, V) (B, 6d) -> proj2(drop(relu(proj1))) + last_hs -> out_layer -> (B, output_dim)

Naming: "lv" is MulT's ``trans_l_with_v`` (query L, key/value V). The seed paper writes the same transformer as
"V <- L" (its Y <- X puts the query X on the right); see docs/mult.md.
Attention dropout follows the *source* modality (design.md §M1.1); memory encoders have max(layers, 3) layers.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtdistill.core.errors import UserError
from mtdistill.models.mult.format import save_model
from mtdistill.models.mult.official import read_teacher_file
from mtdistill.nn.crossmodal import CrossModalEncoder, EncoderCapture

MODALITIES = ("l", "a", "v")
BRANCHES = {"l": ("la", "lv"), "a": ("al", "av"), "v": ("vl", "va")}
CROSS_NAMES = ("la", "lv", "al", "av", "vl", "va")
MODES = ("full", "l", "a", "v")
PE_POSITIONS = ("mult_pad_aware", "absolute")


@dataclass(frozen=True)
class MulTConfig:
    """Every MulT setting; the defaults are the MulT repository's CMU-MOSEI defaults (design.md §M1.2)."""

    orig_dims: tuple[int, int, int] = (300, 74, 35)  # (text, audio, vision) feature sizes
    d: int = 30  # d_l = d_a = d_v (hard-coded 30 in the repo; the paper uses 40)
    layers: int = 5  # cross-modal depth (nlevels)
    heads: int = 5
    kernel_sizes: tuple[int, int, int] = (1, 1, 1)  # conv projection kernels (L, A, V)
    output_dim: int = 1  # 1 = sentiment regression, 7 = the seed's 7 classes
    mode: str = "full"  # "full" | "l" | "a" | "v" (one branch: MulT's --lonly / --aonly / --vonly)
    padding: str | int = "same"  # conv padding: "same" keeps lengths, 0 is MulT-faithful (k=3 shortens by 2)
    attn_dropout: float = 0.1  # source = L (and memory encoders)
    attn_dropout_a: float = 0.0  # source = A
    attn_dropout_v: float = 0.0  # source = V
    relu_dropout: float = 0.1
    res_dropout: float = 0.1
    embed_dropout: float = 0.25  # inside every encoder
    text_dropout: float | None = None  # on the raw text input; None = embed_dropout (as MulT)
    out_dropout: float = 0.0
    attn_mask: bool = True
    pe_positions: str = "mult_pad_aware"  # or "absolute" (every step t gets position t + 1)
    mem_layers: int | None = None  # None = max(layers, 3)

    def __post_init__(self) -> None:
        for name in ("orig_dims", "kernel_sizes"):
            object.__setattr__(self, name, tuple(int(x) for x in getattr(self, name)))
        if self.mode not in MODES:
            raise UserError(f"MulT mode {self.mode!r} is not one of {MODES}")
        if self.pe_positions not in PE_POSITIONS:
            raise UserError(f"pe_positions {self.pe_positions!r} is not one of {PE_POSITIONS}")
        if self.padding != "same" and not (isinstance(self.padding, int) and self.padding >= 0):
            raise UserError(f"padding {self.padding!r} must be 'same' or a non-negative int (0 = MulT)")
        if self.d % self.heads or (2 * self.d) % self.heads:
            raise UserError(f"d={self.d} must be divisible by heads={self.heads}")
        if len(self.orig_dims) != 3 or len(self.kernel_sizes) != 3:
            raise UserError("orig_dims and kernel_sizes need three values (text, audio, vision)")

    @property
    def memory_layers(self) -> int:
        return self.mem_layers if self.mem_layers is not None else max(self.layers, 3)

    @property
    def branches(self) -> tuple[str, ...]:
        return MODALITIES if self.mode == "full" else (self.mode,)

    @property
    def combined_dim(self) -> int:
        return 2 * self.d * len(self.branches)

    def source_attn_dropout(self, source: str) -> float:
        return {"l": self.attn_dropout, "a": self.attn_dropout_a, "v": self.attn_dropout_v}[source]

    def out_length(self, t_in: int, modality: str) -> int:
        """Sequence length after the conv projection (padding 0 shortens by k - 1)."""
        k = self.kernel_sizes[MODALITIES.index(modality)]
        if self.padding == "same" or (k == 1 and self.orig_dims[MODALITIES.index(modality)] == self.d):
            return t_in
        return t_in + 2 * int(self.padding) - k + 1


Capture = bool | Collection[str]
"""False: logits only (fast path). True: every transformer's behaviour. A collection of names: a MulTOutput
that captures only those transformers (the others run the fast path); empty = logits + head features only."""


def wants(capture: Capture, name: str) -> bool:
    return capture is True or (not isinstance(capture, bool) and name in capture)


# The seed paper's teacher: d=40 (8 heads need d % 8 == 0), 4 layers, 8 heads, kernel 3, 7 classes.
SEED_TEACHER = dict(d=40, layers=4, heads=8, kernel_sizes=(3, 3, 3), output_dim=7)


@dataclass
class MulTOutput:
    """Logits plus the behaviour distillation needs; every map is batch-first and per head."""

    logits: Tensor  # (B, output_dim)
    last_hs: Tensor  # (B, C): concatenated last steps (MulT's returned representation)
    penultimate: Tensor  # (B, C): residual-head output, the final linear layer's input
    attention_logits: dict[str, list[Tensor]] = field(default_factory=dict)  # (B, H, Tq, Tk), -inf masked
    post_attention: dict[str, list[Tensor]] = field(default_factory=dict)  # (B, Tq, d): MHA out_proj output
    hidden: dict[str, list[Tensor]] = field(default_factory=dict)  # (B, Tq, d)


def make_encoder(cfg: Any, dim: int, layers: int, attn_dropout: float) -> CrossModalEncoder:
    """One CrossModalEncoder with the MulT dropouts of ``cfg`` (a MulTConfig or a student config)."""
    return CrossModalEncoder(
        embed_dim=dim,
        num_heads=cfg.heads,
        layers=layers,
        attn_dropout=attn_dropout,
        relu_dropout=cfg.relu_dropout,
        res_dropout=cfg.res_dropout,
        embed_dropout=cfg.embed_dropout,
        attn_mask=cfg.attn_mask,
        data_dependent_pe=cfg.pe_positions == "mult_pad_aware",
    )


def post_attention_outputs(encoder: CrossModalEncoder, rec: EncoderCapture) -> list[Tensor]:
    """Per-layer MHA output after out_proj, (B, Tq, d), recomputed from the captured logits and values.

    The capture holds no out_proj output, so it is rebuilt as out_proj(softmax(logits) V) (exact in eval mode;
    in training it omits the attention-dropout mask, which is what a distillation target should do).
    """
    outs = []
    for layer, logits, v in zip(encoder.layers, rec.attention_logits, rec.values, strict=True):
        ctx = torch.softmax(logits.float(), dim=-1).type_as(v) @ v  # (B, H, Tq, hd)
        b, h, tq, hd = ctx.shape
        outs.append(layer.self_attn.out_proj(ctx.permute(0, 2, 1, 3).reshape(b, tq, h * hd)))
    return outs


class ResidualHead(nn.Module):
    """MulT's head: out_layer(proj2(dropout(relu(proj1(x)))) + x)."""

    def __init__(self, dim: int, output_dim: int, out_dropout: float) -> None:
        super().__init__()
        self.proj1 = nn.Linear(dim, dim)
        self.proj2 = nn.Linear(dim, dim)
        self.out_layer = nn.Linear(dim, output_dim)
        self.out_dropout = out_dropout

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C) -> (logits (B, output_dim), penultimate (B, C))."""
        h = self.proj2(F.dropout(F.relu(self.proj1(x)), self.out_dropout, self.training)) + x
        return self.out_layer(h), h


def conv_projection(in_dim: int, d: int, kernel: int, padding: str | int) -> nn.Module | None:
    """Conv1d(in -> d, no bias) along time; None (identity) when in == d and kernel == 1."""
    if in_dim == d and kernel == 1:
        return None
    return nn.Conv1d(in_dim, d, kernel_size=kernel, padding=padding, bias=False)


class MulT(nn.Module):
    """The complete MulT teacher (mode="full") or one branch ("l" / "a" / "v").

    ``MulT()`` with no arguments is the MulT repository's default CMU-MOSEI model (1,073,731 parameters);
    ``MulT(**SEED_TEACHER)`` is the seed paper's setting. Inputs are batch-first (B, T, D) feature sequences.
    """

    def __init__(self, config: MulTConfig | None = None, **options: Any) -> None:
        """``config``, or the `MulTConfig` fields as keywords (orig_dims, d, layers, heads, kernel_sizes, ...)."""
        super().__init__()
        if config is not None and options:
            raise UserError(f"give MulT either config= or its fields, not both (got {', '.join(options)})")
        config = config if config is not None else MulTConfig(**options)
        self.config = cfg = config
        self.proj = nn.ModuleDict()
        for m, in_dim, k in zip(MODALITIES, cfg.orig_dims, cfg.kernel_sizes, strict=True):
            conv = conv_projection(in_dim, cfg.d, k, cfg.padding)
            if conv is not None:
                self.proj[m] = conv
        self.transformers = nn.ModuleDict()
        for m in cfg.branches:
            for name in BRANCHES[m]:
                self.transformers[name] = make_encoder(cfg, cfg.d, cfg.layers, cfg.source_attn_dropout(name[1]))
            self.transformers[f"{m}_mem"] = make_encoder(cfg, 2 * cfg.d, cfg.memory_layers, cfg.attn_dropout)
        self.head = ResidualHead(cfg.combined_dim, cfg.output_dim, cfg.out_dropout)

    @classmethod
    def seed_teacher(cls, orig_dims: tuple[int, int, int] = (300, 74, 35), mode: str = "full", **options: Any) -> MulT:
        """The seed paper's teacher: d=40, 4 layers, 8 heads, kernel 3, 7 classes."""
        return cls(orig_dims=orig_dims, mode=mode, **{**SEED_TEACHER, **options})

    @property
    def transformer_names(self) -> tuple[str, ...]:
        return tuple(self.transformers.keys())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def project(self, text: Tensor, audio: Tensor, vision: Tensor) -> dict[str, Tensor]:
        """Batch-first inputs -> time-first (T, B, d) streams {"l", "a", "v"} (text gets its input dropout)."""
        cfg = self.config
        p_text = cfg.embed_dropout if cfg.text_dropout is None else cfg.text_dropout
        raw = {"l": F.dropout(text, p_text, self.training), "a": audio, "v": vision}
        streams = {}
        for m, dim in zip(MODALITIES, cfg.orig_dims, strict=True):
            x = raw[m]
            if x.ndim != 3 or x.shape[-1] != dim:
                raise UserError(f"{m} input has shape {tuple(x.shape)}; expected (B, T, {dim})")
            x = x.transpose(1, 2)  # (B, D, T) for the conv
            x = self.proj[m](x) if m in self.proj else x
            streams[m] = x.permute(2, 0, 1)  # (T, B, d)
        return streams

    def forward_streams(self, streams: dict[str, Tensor], capture: Capture = False) -> Tensor | MulTOutput:
        """Run the transformers and the head on time-first streams {"l", "a", "v"} of width d."""
        recs: dict[str, EncoderCapture] = {}
        last = []
        for m in self.config.branches:
            hs = []
            for name in BRANCHES[m]:
                hs.append(self._encode(name, streams[name[0]], streams[name[1]], capture, recs))
            h = self._encode(f"{m}_mem", torch.cat(hs, dim=-1), None, capture, recs)
            last.append(h[-1])  # last time step: left padding makes it a real frame
        last_hs = torch.cat(last, dim=-1)
        logits, penultimate = self.head(last_hs)
        if capture is False:
            return logits
        return capture_output(self.transformers, recs, logits, last_hs, penultimate)

    def _encode(
        self, name: str, x_q: Tensor, x_kv: Tensor | None, capture: Capture, recs: dict[str, EncoderCapture]
    ) -> Tensor:
        if not wants(capture, name):
            return self.transformers[name](x_q, x_kv)
        out, recs[name] = self.transformers[name](x_q, x_kv, capture=True)
        return out

    def forward(self, text: Tensor, audio: Tensor, vision: Tensor, capture: Capture = False) -> Tensor | MulTOutput:
        """(B, Tl, Dl), (B, Ta, Da), (B, Tv, Dv) -> logits (B, output_dim), or MulTOutput with capture=True."""
        return self.forward_streams(self.project(text, audio, vision), capture)

    def forward_batch(self, batch: dict[str, Tensor], capture: Capture = False) -> Tensor | MulTOutput:
        """The trainer's entry: a MoseiDataset batch."""
        return self(batch["text"], batch["audio"], batch["vision"], capture=capture)

    def map_shapes(self, lengths: tuple[int, int, int]) -> dict[str, tuple[int, int]]:
        """(Tq, Tk) of every transformer's attention maps for raw input lengths (L, A, V)."""
        t = {m: self.config.out_length(n, m) for m, n in zip(MODALITIES, lengths, strict=True)}
        shapes = {}
        for m in self.config.branches:
            for name in BRANCHES[m]:
                shapes[name] = (t[name[0]], t[name[1]])
            shapes[f"{m}_mem"] = (t[m], t[m])
        return shapes

    # ---- checkpoints ----
    @classmethod
    def from_checkpoint(cls, path: str | Path, heads: int | None = None, attn_mask: bool | None = None) -> MulT:
        """A MulT teacher in eval mode from our ``.safetensors``, an official MulT whole-model pickle
        (``torch.save(model)``) or an official ``state_dict`` (which needs ``heads``); see `official`.

        Nothing in the file is imported or run. Official files keep the official conv padding (0).
        ``attn_mask`` overrides the file's (a state_dict does not record it; the official default is True).
        """
        file = read_teacher_file(path, heads=heads, attn_mask=attn_mask)
        if file.source == "mtdistill" and heads is not None and int(file.config.get("heads", heads)) != heads:
            raise UserError(f"{path} has {file.config['heads']} heads, not heads={heads}; drop --heads")
        try:
            model = cls(config=MulTConfig(**file.config))
        except TypeError as exc:
            raise UserError(f"{path}: its config does not fit this version's MulTConfig ({exc})") from None
        try:
            model.load_state_dict(file.state, strict=True)
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            raise UserError(f"{path}: weights do not fit a MulT ({' '.join(lines[:2])[:300]})") from None
        return model.eval()

    def save_checkpoint(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        return save_model(self, "mult", asdict(self.config), path, extra)


class LazyPostAttention(dict):
    """{transformer: per-layer out_proj outputs}, computed on first access (only CRD post-attention reads it)."""

    def __init__(self, transformers: nn.ModuleDict, recs: dict[str, EncoderCapture]) -> None:
        super().__init__()
        self._transformers, self._recs = transformers, recs

    def __missing__(self, name: str) -> list[Tensor]:
        if name not in self._recs:
            raise KeyError(name)
        value = self[name] = post_attention_outputs(self._transformers[name], self._recs[name])
        return value

    def __contains__(self, name: object) -> bool:
        return name in self._recs

    def __iter__(self):
        return iter(self._recs)

    def __len__(self) -> int:
        return len(self._recs)

    def keys(self):
        return self._recs.keys()


def capture_output(
    transformers: nn.ModuleDict, recs: dict[str, EncoderCapture], logits: Tensor, last_hs: Tensor, penultimate: Tensor
) -> MulTOutput:
    """Gather per-transformer captures into a MulTOutput."""
    out = MulTOutput(logits=logits, last_hs=last_hs, penultimate=penultimate)
    for name, rec in recs.items():
        out.attention_logits[name] = rec.attention_logits
        out.hidden[name] = rec.hidden
    out.post_attention = LazyPostAttention(transformers, recs)
    return out

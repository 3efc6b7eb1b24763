"""Video-only students of seed paper 002 (section 4.1-4.2) and their pairing with the MulT teachers.

The student sees only vision (B, Tv, 35). Three bias-free Conv1d adapters turn it into proxy streams
V^ (video), L^ ("language") and A^ ("audio"). With EDAM-S lengths the proxies get the teacher's lengths
(L^ = 50 steps, A^ = V^ = 500 for MOSEI), so every student attention map has its teacher partner's shape.

- Student-9: the MulT topology (6 cross-modal + 3 memory encoders + residual head) on (L^, A^, V^).
- Student-3: three encoders named like MulT's (query + source, e.g. "lv" = query L^, key/value V^), the
  last steps concatenated (B, 3d) -> MulT's residual head.

Transformer names follow MulT ("lv" = ``trans_l_with_v``). The paper writes "V <- L" for that transformer
(query on the right); CONFIGURATIONS below spells the paper's five student-teacher configurations in MulT names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtdistill.core.errors import UserError
from mtdistill.models.mult.format import save_model
from mtdistill.models.mult.teacher import (
    MODALITIES,
    PE_POSITIONS,
    Capture,
    MulT,
    MulTConfig,
    MulTOutput,
    ResidualHead,
    capture_output,
    make_encoder,
    wants,
)
from mtdistill.nn.crossmodal import EncoderCapture

STUDENT_KINDS = ("student9", "student3")
ADAPTERS = ("strided", "unpadded", "pool")
SELF_KV = ("fixed", "memory")


@dataclass(frozen=True)
class Configuration:
    """One student-teacher configuration of the seed paper (section 4.2)."""

    number: int
    title: str
    teacher_mode: str  # MulT mode of the teacher
    student_kind: str
    student_transformers: tuple[str, ...]  # Student-3 encoders; empty for Student-9
    pairs: tuple[tuple[str, str], ...]  # (student transformer, teacher transformer) distilled one-to-one


_NINE = ("la", "lv", "l_mem", "al", "av", "a_mem", "vl", "va", "v_mem")
CONFIGURATIONS: dict[int, Configuration] = {
    1: Configuration(1, "KD from the Complete Teacher Network", "full", "student9", (), tuple((n, n) for n in _NINE)),
    # paper: student V<-V, A<-V, L<-V; teacher A<-V, L<-V (query = video)
    2: Configuration(2, "KD from Video Branch", "v", "student3", ("vv", "va", "vl"), (("va", "va"), ("vl", "vl"))),
    # paper: student V<-V, V<-L, A<-L; teacher V<-L, A<-L (query = language)
    3: Configuration(3, "KD from Language Branch", "l", "student3", ("vv", "lv", "la"), (("lv", "lv"), ("la", "la"))),
    # paper: student V<-V, V<-A, L<-A; teacher V<-A, L<-A (query = audio)
    4: Configuration(4, "KD from Audio Branch", "a", "student3", ("vv", "av", "al"), (("av", "av"), ("al", "al"))),
    # paper: student V<-V, V<-L, V<-A; teacher V<-A, V<-L of the complete teacher (Fig. 1)
    5: Configuration(
        5, "KD from Language and Audio Branches", "full", "student3", ("vv", "lv", "av"), (("lv", "lv"), ("av", "av"))
    ),
}


def configuration(number: int) -> Configuration:
    if number not in CONFIGURATIONS:
        raise UserError(f"student-teacher configuration {number} does not exist; choose 1..5 (seed paper 4.2)")
    return CONFIGURATIONS[number]


@dataclass(frozen=True)
class StudentConfig:
    kind: str = "student3"
    transformers: tuple[str, ...] = ("vv", "lv", "av")  # Student-3 only
    vision_dim: int = 35
    vision_length: int = 500
    proxy_lengths: tuple[int, int, int] | None = (50, 500, 500)  # (L^, A^, V^); None = all vision_length
    adapter: str = "strided"  # how a proxy is shortened: strided conv | unpadded conv | adaptive pool + conv
    kernel_sizes: tuple[int, int, int] = (7, 5, 3)  # (L^, A^, V^) kernels where the length is kept ("same")
    d: int = 40
    layers: int = 4
    heads: int = 8
    output_dim: int = 7
    attn_dropout: float = 0.1
    attn_dropout_a: float = 0.0
    attn_dropout_v: float = 0.0
    relu_dropout: float = 0.1
    res_dropout: float = 0.1
    embed_dropout: float = 0.25
    out_dropout: float = 0.0
    attn_mask: bool = True
    pe_positions: str = "mult_pad_aware"
    mem_layers: int | None = None  # Student-9 memory depth; None = max(layers, 3)
    self_kv: str = "fixed"  # Student-3 "vv": key/value = the embedded V^ (like the others) or "memory" self-attention

    def __post_init__(self) -> None:
        object.__setattr__(self, "transformers", tuple(self.transformers))
        object.__setattr__(self, "kernel_sizes", tuple(int(k) for k in self.kernel_sizes))
        if self.proxy_lengths is not None:
            object.__setattr__(self, "proxy_lengths", tuple(int(n) for n in self.proxy_lengths))
        if self.kind not in STUDENT_KINDS:
            raise UserError(f"student kind {self.kind!r} is not one of {STUDENT_KINDS}")
        if self.adapter not in ADAPTERS:
            raise UserError(f"adapter {self.adapter!r} is not one of {ADAPTERS}")
        if self.self_kv not in SELF_KV:
            raise UserError(f"self_kv {self.self_kv!r} is not one of {SELF_KV}")
        if self.pe_positions not in PE_POSITIONS:
            raise UserError(f"pe_positions {self.pe_positions!r} is not one of {PE_POSITIONS}")
        if self.d % self.heads:
            raise UserError(f"d={self.d} must be divisible by heads={self.heads}")
        if self.kind == "student3":
            bad = [n for n in self.transformers if len(n) != 2 or not set(n) <= set(MODALITIES)]
            if bad or not self.transformers:
                raise UserError(f"Student-3 transformers {self.transformers} must be names like 'vv', 'lv', 'av'")
        if any(n > self.vision_length for n in self.lengths):
            raise UserError(
                f"proxy_lengths {self.proxy_lengths} exceed the vision length {self.vision_length}; "
                "adapters only shorten"
            )

    @property
    def lengths(self) -> tuple[int, int, int]:
        """(L^, A^, V^) proxy lengths."""
        return self.proxy_lengths or (self.vision_length,) * 3

    def source_attn_dropout(self, source: str) -> float:
        return {"l": self.attn_dropout, "a": self.attn_dropout_a, "v": self.attn_dropout_v}[source]


def proxy_adapter(cfg: StudentConfig, index: int) -> nn.Module:
    """Conv1d(vision_dim -> d, no bias) producing proxy ``MODALITIES[index]`` with its target length.

    Same length: a "same"-padded conv with kernel ``kernel_sizes[index]``. Shorter (EDAM-S, design.md §M5):
    "strided" stride s = T_in // T_out and kernel T_in - (T_out - 1) s (500 -> 50: kernel = stride = 10);
    "unpadded" stride 1, kernel T_in - T_out + 1 (500 -> 50: kernel 451); "pool" adaptive average pool then 1x1 conv.
    """
    t_in, t_out = cfg.vision_length, cfg.lengths[index]
    if t_out == t_in:
        return nn.Conv1d(cfg.vision_dim, cfg.d, cfg.kernel_sizes[index], padding="same", bias=False)
    if cfg.adapter == "pool":
        return nn.Sequential(nn.AdaptiveAvgPool1d(t_out), nn.Conv1d(cfg.vision_dim, cfg.d, 1, bias=False))
    if cfg.adapter == "unpadded":
        return nn.Conv1d(cfg.vision_dim, cfg.d, t_in - t_out + 1, bias=False)
    stride = t_in // t_out
    return nn.Conv1d(cfg.vision_dim, cfg.d, t_in - (t_out - 1) * stride, stride=stride, bias=False)


class VideoStudent(nn.Module):
    """Student-9 or Student-3 on one input modality (vision)."""

    def __init__(self, config: StudentConfig | None = None, **options: Any) -> None:
        super().__init__()
        self.config = cfg = config or StudentConfig(**options)
        self.adapters = nn.ModuleDict({m: proxy_adapter(cfg, i) for i, m in enumerate(MODALITIES)})
        if cfg.kind == "student9":
            core = MulTConfig(
                orig_dims=(cfg.d,) * 3,
                d=cfg.d,
                layers=cfg.layers,
                heads=cfg.heads,
                kernel_sizes=(1, 1, 1),
                output_dim=cfg.output_dim,
                mode="full",
                attn_dropout=cfg.attn_dropout,
                attn_dropout_a=cfg.attn_dropout_a,
                attn_dropout_v=cfg.attn_dropout_v,
                relu_dropout=cfg.relu_dropout,
                res_dropout=cfg.res_dropout,
                embed_dropout=cfg.embed_dropout,
                text_dropout=0.0,
                out_dropout=cfg.out_dropout,
                attn_mask=cfg.attn_mask,
                pe_positions=cfg.pe_positions,
                mem_layers=cfg.mem_layers,
            )
            self.core = MulT(config=core)  # no conv projections: the adapters already give width d
        else:
            self.transformers = nn.ModuleDict(
                {n: make_encoder(cfg, cfg.d, cfg.layers, cfg.source_attn_dropout(n[1])) for n in cfg.transformers}
            )
            self.head = ResidualHead(len(cfg.transformers) * cfg.d, cfg.output_dim, cfg.out_dropout)

    @property
    def transformer_names(self) -> tuple[str, ...]:
        return self.core.transformer_names if self.config.kind == "student9" else tuple(self.transformers.keys())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def proxies(self, vision: Tensor) -> dict[str, Tensor]:
        """(B, Tv, Dv) -> time-first proxy streams {"l": L^, "a": A^, "v": V^}, each (T, B, d)."""
        cfg = self.config
        if vision.ndim != 3 or vision.shape[1:] != (cfg.vision_length, cfg.vision_dim):
            raise UserError(
                f"vision input has shape {tuple(vision.shape)}; this student expects "
                f"(B, {cfg.vision_length}, {cfg.vision_dim})"
            )
        x = vision.transpose(1, 2)
        return {m: self.adapters[m](x).permute(2, 0, 1) for m in MODALITIES}

    def forward(self, vision: Tensor, capture: Capture = False) -> Tensor | MulTOutput:
        """vision (B, Tv, Dv) -> logits (B, output_dim), or MulTOutput with capture=True."""
        streams = self.proxies(vision)
        if self.config.kind == "student9":
            return self.core.forward_streams(streams, capture)
        recs: dict[str, EncoderCapture] = {}
        last = []
        for name, enc in self.transformers.items():
            q, s = name[0], name[1]
            x_kv = None if (q == s and self.config.self_kv == "memory") else streams[s]
            if wants(capture, name):
                h, recs[name] = enc(streams[q], x_kv, capture=True)
            else:
                h = enc(streams[q], x_kv)
            last.append(h[-1])
        last_hs = torch.cat(last, dim=-1)
        logits, penultimate = self.head(last_hs)
        if capture is False:
            return logits
        return capture_output(self.transformers, recs, logits, last_hs, penultimate)

    def forward_batch(self, batch: dict[str, Tensor], capture: Capture = False) -> Tensor | MulTOutput:
        return self(batch["vision"], capture=capture)

    def map_shapes(self, lengths: tuple[int, int, int] | None = None) -> dict[str, tuple[int, int]]:
        """(Tq, Tk) of every transformer's attention maps (``lengths`` is ignored: the student's are fixed)."""
        t = dict(zip(MODALITIES, self.config.lengths, strict=True))
        if self.config.kind == "student9":
            return self.core.map_shapes(self.config.lengths)
        return {n: (t[n[0]], t[n[1]]) for n in self.transformers}

    def save_checkpoint(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        return save_model(self, "student", asdict(self.config), path, extra)


def student_for(
    number: int,
    teacher: MulT | None = None,
    lengths: tuple[int, int, int] = (50, 500, 500),
    vision_dim: int = 35,
    edam_s: bool = True,
    **options: Any,
) -> VideoStudent:
    """The student of configuration ``number``; with ``edam_s`` its proxies take the teacher's stream lengths.

    ``lengths`` are the raw input lengths (L, A, V); with a teacher they pass through its conv projections
    (padding 0 shortens them), so each paired map has the teacher's (Tq, Tk).
    """
    conf = configuration(number)
    if teacher is not None:
        proxy = tuple(teacher.config.out_length(n, m) for m, n in zip(MODALITIES, lengths, strict=True))
    else:
        proxy = tuple(lengths)
    cfg = StudentConfig(
        kind=conf.student_kind,
        transformers=conf.student_transformers or ("vv", "lv", "av"),
        vision_dim=vision_dim,
        vision_length=lengths[2],
        proxy_lengths=proxy if edam_s else None,
        **options,
    )
    return VideoStudent(cfg)

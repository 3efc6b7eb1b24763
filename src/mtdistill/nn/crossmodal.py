"""The cross-modal transformer encoder shared by VocaLiST and MulT.

Read top to bottom: positional embedding -> attention -> layer -> encoder. The behaviour follows the
official MulT / VocaLiST code as described in design.md §1.5-1.8 (and
design.md §M1.4), written from that description:

* pre-LN layers; the first LayerNorm of a layer normalises query, key *and* value;
* the source sequence is embedded once (x sqrt(d) + sinusoidal PE + its own dropout for K and for V) and the
  same K/V streams feed every layer; with no source (``x_kv=None``) the layer attends to itself (MulT memory);
* the sinusoidal PE is data dependent: a token whose raw channel 0 is exactly 0 gets position 0 (a zero PE);
* an additive "future" mask ``-inf where j - i >= 1 + |Tk - Tq|``;
* packed ``in_proj_weight`` / ``in_proj_bias`` and ``out_proj`` named as in ``nn.MultiheadAttention``;
  heads are contiguous channel blocks (fairseq's ``b * H + h`` ordering when flattened).

All tensors are time-first ``(T, B, C)``, as in fairseq.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoid_table(n_positions: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Rows p = [sin(p w_0..w_{h-1}), cos(p w_0..w_{h-1})] (concatenated), w_i = exp(-i ln(1e4) / (h - 1)).

    Row 0 is the padding row and is all zeros; an odd ``dim`` gets a zero last column.
    """
    half = dim // 2
    step = math.log(10000.0) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=device) * -step)
    angles = torch.arange(n_positions, dtype=torch.float32, device=device)[:, None] * freqs[None, :]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(n_positions, 1, device=device)], dim=1)
    table[0] = 0.0
    return table


class SinusoidalPositionalEmbedding(nn.Module):
    """fairseq-style sinusoidal PE whose positions come from the data (design.md §1.6).

    ``_float_tensor`` is an unused persistent buffer kept only because official checkpoints carry it.
    """

    def __init__(self, dim: int, data_dependent: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.data_dependent = data_dependent
        self.register_buffer("_float_tensor", torch.zeros(1))

    def positions(self, x_in: Tensor) -> Tensor:
        """(T, B) positions: t + 1, or 0 where the raw channel 0 is exactly zero (when data dependent)."""
        t, b = x_in.shape[:2]
        pos = torch.arange(1, t + 1, device=x_in.device)[:, None].expand(t, b)
        if self.data_dependent:
            pos = pos * (x_in[..., 0] != 0).long()
        return pos

    def forward(self, x_in: Tensor) -> Tensor:
        table = sinusoid_table(x_in.shape[0] + 1, self.dim, x_in.device).to(x_in.dtype)
        return table[self.positions(x_in)].detach()


def offset_future_mask(tq: int, tk: int, device: torch.device | None = None, dtype=torch.float32) -> Tensor:
    """Additive (Tq, Tk) mask: -inf where j - i >= 1 + |Tk - Tq|, else 0 (design.md §1.7)."""
    i = torch.arange(tq, device=device)[:, None]
    j = torch.arange(tk, device=device)[None, :]
    mask = torch.zeros(tq, tk, device=device, dtype=dtype)
    return mask.masked_fill(j - i >= 1 + abs(tk - tq), float("-inf"))


@dataclass
class EncoderCapture:
    """Per-layer behaviour of one encoder, batch-first and per head."""

    attention_logits: list[Tensor] = field(default_factory=list)  # (B, H, Tq, Tk), pre-softmax, -inf masked
    queries: list[Tensor] = field(default_factory=list)  # (B, H, Tq, hd), scaled by hd**-0.5
    keys: list[Tensor] = field(default_factory=list)  # (B, H, Tk, hd)
    values: list[Tensor] = field(default_factory=list)  # (B, H, Tk, hd), after the in-projection
    hidden: list[Tensor] = field(default_factory=list)  # (B, Tq, d), layer outputs through the final LayerNorm


class CrossModalAttention(nn.Module):
    """Multi-head attention with a packed Q/K/V projection (parameter names of nn.MultiheadAttention)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {heads}")
        self.dim, self.heads, self.head_dim, self.dropout = dim, heads, dim // heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        # Xavier on the whole packed matrix (bound sqrt(6 / 4d)), as the official init.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: Tensor) -> Tensor:
        """(T, B, d) -> (B, H, T, hd); head h holds channels [h*hd, (h+1)*hd)."""
        t, b, _ = x.shape
        return x.reshape(t, b, self.heads, self.head_dim).permute(1, 2, 0, 3)

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, capture: EncoderCapture | None
    ) -> Tensor:
        w, bias, d = self.in_proj_weight, self.in_proj_bias, self.dim
        q = self._heads(F.linear(query, w[:d], bias[:d]))
        k = self._heads(F.linear(key, w[d : 2 * d], bias[d : 2 * d]))
        v = self._heads(F.linear(value, w[2 * d :], bias[2 * d :]))
        p_drop = self.dropout if self.training else 0.0
        if capture is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop)
        else:
            q = q * self.head_dim**-0.5
            logits = q @ k.transpose(-1, -2)
            if mask is not None:
                logits = logits + mask
            probs = F.dropout(torch.softmax(logits.float(), dim=-1).type_as(logits), p_drop, self.training)
            out = probs @ v
            capture.attention_logits.append(logits)
            capture.queries.append(q)
            capture.keys.append(k)
            capture.values.append(v)
        tq, b = query.shape[:2]
        return self.out_proj(out.permute(2, 0, 1, 3).reshape(tq, b, d))


class CrossModalLayer(nn.Module):
    """Pre-LN layer: x + Attn(LN0(x), LN0(k), LN0(v)), then x + FFN(LN1(x))."""

    def __init__(
        self, dim: int, heads: int, attn_dropout: float, relu_dropout: float, res_dropout: float, ffn_mult: int = 4
    ) -> None:
        super().__init__()
        self.self_attn = CrossModalAttention(dim, heads, attn_dropout)
        self.fc1 = nn.Linear(dim, ffn_mult * dim)
        self.fc2 = nn.Linear(ffn_mult * dim, dim)
        self.layer_norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])
        self.relu_dropout, self.res_dropout = relu_dropout, res_dropout
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(
        self, x: Tensor, k: Tensor | None, v: Tensor | None, mask: Tensor | None, capture: EncoderCapture | None
    ) -> Tensor:
        residual = x
        x = self.layer_norms[0](x)
        if k is None:  # self-attention (MulT memory transformer): K/V follow the updated query stream
            k = v = x
        else:  # one LayerNorm for query, key and value
            k, v = self.layer_norms[0](k), self.layer_norms[0](v)
        x = self.self_attn(x, k, v, mask, capture)
        x = residual + F.dropout(x, self.res_dropout, self.training)
        residual = x
        x = F.dropout(F.relu(self.fc1(self.layer_norms[1](x))), self.relu_dropout, self.training)
        return residual + F.dropout(self.fc2(x), self.res_dropout, self.training)


class CrossModalEncoder(nn.Module):
    """MulT-style cross-modal transformer encoder with optional behaviour capture."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        layers: int,
        attn_dropout: float = 0.0,
        relu_dropout: float = 0.1,
        res_dropout: float = 0.1,
        embed_dropout: float = 0.25,
        attn_mask: bool = True,
        ffn_mult: int = 4,
        data_dependent_pe: bool = True,
    ) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.attn_mask = embed_dim, num_heads, attn_mask
        self.embed_dropout = embed_dropout
        self.embed_scale = math.sqrt(embed_dim)
        self.register_buffer("version", torch.tensor([2.0]))  # fairseq leftover, present in checkpoints
        self.embed_positions = SinusoidalPositionalEmbedding(embed_dim, data_dependent_pe)
        self.layers = nn.ModuleList(
            CrossModalLayer(embed_dim, num_heads, attn_dropout, relu_dropout, res_dropout, ffn_mult)
            for _ in range(layers)
        )
        self.layer_norm = nn.LayerNorm(embed_dim)

    def embed(self, x_in: Tensor) -> Tensor:
        """x sqrt(d) + PE(x) then embedding dropout; each call draws its own dropout mask."""
        x = self.embed_scale * x_in + self.embed_positions(x_in)
        return F.dropout(x, self.embed_dropout, self.training)

    def forward(self, x_q: Tensor, x_kv: Tensor | None = None, capture: bool = False):
        """x_q (Tq, B, d), x_kv (Tk, B, d) or None -> (Tq, B, d) [, EncoderCapture]."""
        x = self.embed(x_q)
        k = v = None
        if x_kv is not None:  # K and V are embedded separately (independent dropout) and reused by every layer
            k, v = self.embed(x_kv), self.embed(x_kv)
        tk = x_q.shape[0] if x_kv is None else x_kv.shape[0]
        mask = offset_future_mask(x_q.shape[0], tk, x_q.device, x.dtype) if self.attn_mask else None
        rec = EncoderCapture() if capture else None
        for layer in self.layers:
            x = layer(x, k, v, mask, rec)
            if rec is not None:
                rec.hidden.append(self.layer_norm(x).transpose(0, 1))
        x = self.layer_norm(x)
        return (x, rec) if capture else x

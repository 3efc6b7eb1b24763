"""Contrastive Representation Distillation (Tian et al. 2020) at the four levels of seed paper 002.

Pieces (design.md §M3, written from the description, not from RepDistiller's code):
- ``Embed``: Linear(dim_in -> feat_dim) then L2 normalisation, one per side, both trained;
- ``ContrastMemory``: two non-trainable banks (n_data, feat_dim), student side and teacher side, momentum 0.5,
  normaliser Z fixed on the first batch; scores exp(<memory row, embedding> / T);
- negatives: drawn with ``torch.randint`` on the memory's device (no CUDA-only alias sampler), uniformly over the
  data set ("uniform") or only from other 7-class labels ("class"); column 0 is the positive (the sample itself);
- ``nce_loss``: the NCE objective with K negatives and noise P_n = 1 / n_data; L_CRD = student-anchor + teacher-anchor.

Levels (``level``): "final" (logits, eq. 2), "penultimate" (the head's residual output, eq. 2),
"post_attention" (MHA out_proj outputs per transformer pair and layer, pooled over time, eq. 3-7) and
"attention" (attention maps per pair and layer, pooled to at most pool_size x pool_size, eq. 8-9).
Per-row CRD (eq. 9 taken literally) needs n_data x rows memory rows; pooling the map is the documented stand-in.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtdistill.core.errors import UserError
from mtdistill.distill.mult.objective import MulTObjective, get_maps, pair_key, parse_pairs, select_layers
from mtdistill.distill.registry import MULT, register

LEVELS = ("final", "penultimate", "post_attention", "attention")
NEGATIVES = ("uniform", "class")
EPS = 1e-7


class Embed(nn.Module):
    """Flatten -> Linear(dim_in, feat_dim) -> divide by the L2 norm."""

    def __init__(self, dim_in: int, feat_dim: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, feat_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x.reshape(x.shape[0], -1))
        return x / x.norm(p=2, dim=1, keepdim=True)


class NegativeSampler(nn.Module):
    """Draws (B, K + 1) memory rows: column 0 the positive, K negatives uniform or from other classes."""

    def __init__(self, n_data: int, class_ids: Tensor | None = None) -> None:
        super().__init__()
        self.n_data = n_data
        if class_ids is None:
            self.register_buffer("order", torch.empty(0, dtype=torch.long), persistent=False)
            self.register_buffer("start", torch.empty(0, dtype=torch.long), persistent=False)
            self.register_buffer("count", torch.empty(0, dtype=torch.long), persistent=False)
            self.register_buffer("class_ids", torch.empty(0, dtype=torch.long), persistent=False)
            return
        class_ids = torch.as_tensor(class_ids, dtype=torch.long).reshape(-1)
        if class_ids.numel() != n_data:
            raise UserError(f"class_ids has {class_ids.numel()} entries for n_data={n_data}")
        n_cls = int(class_ids.max()) + 1
        count = torch.bincount(class_ids, minlength=n_cls)
        if bool((count == n_data).any()):
            raise UserError("class-aware negatives need at least two classes in the training set; use uniform")
        # indices sorted by class: class c occupies order[start[c] : start[c] + count[c]]
        self.register_buffer("order", torch.argsort(class_ids, stable=True), persistent=False)
        self.register_buffer("start", torch.cumsum(count, 0) - count, persistent=False)
        self.register_buffer("count", count, persistent=False)
        self.register_buffer("class_ids", class_ids, persistent=False)

    def forward(self, index: Tensor, k: int) -> Tensor:
        b, device = index.shape[0], index.device
        if self.order.numel() == 0:
            idx = torch.randint(0, self.n_data, (b, k + 1), device=device)
        else:
            c = self.class_ids.to(device)[index]
            start, count = self.start.to(device)[c][:, None], self.count.to(device)[c][:, None]
            # a uniform position among the n - n_c other-class entries, skipping the block of class c
            r = (torch.rand(b, k + 1, device=device) * (self.n_data - count)).long()
            r = torch.minimum(r, self.n_data - count - 1)
            idx = self.order.to(device)[r + (r >= start).long() * count]
        idx[:, 0] = index
        return idx


class ContrastMemory(nn.Module):
    """Two memory banks scored against the other side's embedding (design.md §M3)."""

    def __init__(self, feat_dim: int, n_data: int, nce_k: int, nce_t: float = 0.07, nce_m: float = 0.5) -> None:
        super().__init__()
        self.n_data, self.k, self.t, self.m = n_data, nce_k, nce_t, nce_m
        stdv = 1.0 / (feat_dim / 3) ** 0.5
        self.register_buffer("memory_v1", torch.rand(n_data, feat_dim) * 2 * stdv - stdv)  # student side
        self.register_buffer("memory_v2", torch.rand(n_data, feat_dim) * 2 * stdv - stdv)  # teacher side
        self.register_buffer("z_v1", torch.tensor(-1.0))  # -1 = not set yet
        self.register_buffer("z_v2", torch.tensor(-1.0))

    def scores(self, memory: Tensor, anchor: Tensor, idx: Tensor) -> Tensor:
        """exp(<memory[idx], anchor> / T): (B, K + 1)."""
        rows = memory[idx].detach()  # (B, K+1, feat)
        return torch.exp(torch.bmm(rows, anchor[:, :, None])[..., 0] / self.t)

    def forward(self, v1: Tensor, v2: Tensor, index: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Student embedding v1, teacher embedding v2 -> (student-anchor scores, teacher-anchor scores)."""
        out_v2 = self.scores(self.memory_v1, v2, idx)  # teacher anchor vs student memory
        out_v1 = self.scores(self.memory_v2, v1, idx)  # student anchor vs teacher memory
        with torch.no_grad():  # Z is fixed on the first batch and never updated (RepDistiller issues #5, #51)
            if float(self.z_v1) < 0:
                self.z_v1.fill_(float(out_v1.mean()) * self.n_data)
            if float(self.z_v2) < 0:
                self.z_v2.fill_(float(out_v2.mean()) * self.n_data)
        out_v1, out_v2 = out_v1 / self.z_v1, out_v2 / self.z_v2
        if self.training:
            self.update(v1.detach(), v2.detach(), index)
        return out_v1, out_v2

    @torch.no_grad()
    def update(self, v1: Tensor, v2: Tensor, index: Tensor) -> None:
        """memory[y] <- normalise(m * memory[y] + (1 - m) * v) on both sides (momentum m = 0.5)."""
        for memory, v in ((self.memory_v1, v1), (self.memory_v2, v2)):
            pos = memory[index] * self.m + v * (1 - self.m)
            memory.index_copy_(0, index, F.normalize(pos, dim=1))


def nce_loss(scores: Tensor, n_data: int) -> Tensor:
    """CRD's NCE objective with K = scores.shape[1] - 1 negatives and noise P_n = 1 / n_data:
    -(1/B) sum_b [log(P_pos / (P_pos + K P_n + eps)) + sum_k log(K P_n / (P_neg,k + K P_n + eps))].
    """
    b, k = scores.shape[0], scores.shape[1] - 1
    noise = k / n_data
    log_d1 = torch.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
    log_d0 = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(log_d1.sum() + log_d0.sum()) / b


class CRDCriterion(nn.Module):
    """One CRD comparison point: two embeddings, a memory and the symmetric NCE loss (the paper's CRDLoss)."""

    def __init__(
        self,
        s_dim: int,
        t_dim: int,
        n_data: int,
        feat_dim: int,
        nce_k: int,
        nce_t: float,
        nce_m: float,
        sampler: NegativeSampler,
    ) -> None:
        super().__init__()
        self.embed_s, self.embed_t = Embed(s_dim, feat_dim), Embed(t_dim, feat_dim)
        self.memory = ContrastMemory(feat_dim, n_data, nce_k, nce_t, nce_m)
        self.sampler = sampler  # shared, holds no state worth saving
        self.n_data, self.k = n_data, nce_k

    def forward(self, f_s: Tensor, f_t: Tensor, index: Tensor) -> Tensor:
        v1, v2 = self.embed_s(f_s), self.embed_t(f_t.detach())
        idx = self.sampler(index, self.k)
        out_v1, out_v2 = self.memory(v1, v2, index, idx)
        return nce_loss(out_v1, self.n_data) + nce_loss(out_v2, self.n_data)


def pool_sequence(x: Tensor, how: str) -> Tensor:
    """(B, T, d) -> (B, d): "mean" over time or the "last" step (the step MulT's head reads)."""
    return x[:, -1] if how == "last" else x.mean(dim=1)


def pool_attention(logits: Tensor, size: int, how: str) -> Tensor:
    """Attention probabilities (eq. 8) of a (B, H, Tq, Tk) map, head-averaged and shrunk for the Linear embed:
    "adaptive" -> adaptive average pool to at most size x size; "rows_mean" -> mean over query rows (B, Tk)."""
    p = torch.softmax(logits.float(), dim=-1).mean(dim=1)  # (B, Tq, Tk); masked entries are 0
    if how == "rows_mean":
        return p.mean(dim=1)
    tq, tk = p.shape[-2:]
    return F.adaptive_avg_pool2d(p[:, None], (min(size, tq), min(size, tk)))[:, 0].flatten(1)


@register("crd", family=MULT)
class CRDLoss(MulTObjective):
    """alpha * L_c + beta * L_CRD at one level (RepDistiller's CRD-alone weights: alpha=1, beta=0.8)."""

    def __init__(
        self,
        level: str = "penultimate",
        n_data: int | None = None,
        pairs: Any = None,
        layers: Any = "all",
        alpha: float = 1.0,
        beta: float = 0.8,
        feat_dim: int = 128,
        nce_k: int = 4096,
        nce_t: float = 0.07,
        nce_m: float = 0.5,
        negatives: str = "uniform",
        class_ids: Any = None,
        time_pool: str = "mean",
        attention_pool: str = "adaptive",
        pool_size: int = 16,
    ) -> None:
        super().__init__(alpha, beta)
        if level not in LEVELS:
            raise UserError(f"CRD level {level!r} is not one of {LEVELS}")
        if negatives not in NEGATIVES:
            raise UserError(f"negatives={negatives!r} must be one of {NEGATIVES}")
        if not n_data or n_data < 2:
            raise UserError("CRD needs n_data (the training-set size) >= 2; the trainer passes it")
        if negatives == "class" and class_ids is None:
            raise UserError("negatives: class needs the training set's 7-class ids (class_ids)")
        if time_pool not in ("mean", "last") or attention_pool not in ("adaptive", "rows_mean"):
            raise UserError("time_pool must be mean|last and attention_pool adaptive|rows_mean")
        self.level, self.n_data, self.layers = level, int(n_data), layers
        self.pairs = parse_pairs(pairs) if level in ("post_attention", "attention") else ()
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m = feat_dim, min(int(nce_k), int(n_data) - 1), nce_t, nce_m
        self.time_pool, self.attention_pool, self.pool_size = time_pool, attention_pool, pool_size
        self.sampler = NegativeSampler(self.n_data, None if negatives == "uniform" else class_ids)
        self.criteria = nn.ModuleDict()

    def capture_names(self, side: str) -> set[str]:
        # final / penultimate read only the head: an empty set gives a MulTOutput without any map capture
        return {p[0] if side == "student" else p[1] for p in self.pairs}

    def features(self, out: Any, side: str) -> dict[str, Tensor]:
        """The vectors compared at this level: {point name: (B, dim)}."""
        if self.level == "final":
            return {"final": out if isinstance(out, Tensor) else out.logits}
        if self.level == "penultimate":
            return {"penultimate": out.penultimate}
        feats = {}
        for pair in self.pairs:
            name = pair[0] if side == "student" else pair[1]
            attr = "post_attention" if self.level == "post_attention" else "attention_logits"
            maps = get_maps(out, attr, name, side)
            feats[pair_key(pair)] = maps  # type: ignore[assignment]
        return feats

    def points(self, student_out: Any, teacher_out: Any) -> list[tuple[str, Tensor, Tensor]]:
        """(criterion key, student vector, teacher vector) for every comparison point."""
        fs, ft = self.features(student_out, "student"), self.features(teacher_out, "teacher")
        if self.level in ("final", "penultimate"):
            return [(k, fs[k], ft[k]) for k in fs]
        out = []
        for key in fs:
            s_maps, t_maps = fs[key], ft[key]
            for ls, lt in select_layers(len(s_maps), len(t_maps), self.layers):
                if self.level == "post_attention":
                    s, t = pool_sequence(s_maps[ls], self.time_pool), pool_sequence(t_maps[lt], self.time_pool)
                else:
                    s = pool_attention(s_maps[ls], self.pool_size, self.attention_pool)
                    t = pool_attention(t_maps[lt], self.pool_size, self.attention_pool)
                out.append((f"{key}__{ls}_{lt}", s, t))
        return out

    def setup(self, student_out: Any, teacher_out: Any) -> None:
        for key, s, t in self.points(student_out, teacher_out):
            if key not in self.criteria:
                self.criteria[key] = CRDCriterion(
                    s.shape[1], t.shape[1], self.n_data, self.feat_dim, self.nce_k, self.nce_t, self.nce_m, self.sampler
                ).to(s.device)

    def distill(self, student_out: Any, teacher_out: Any, labels: Tensor, index: Tensor | None) -> Tensor:
        if index is None:
            raise UserError("CRD needs the dataset sample index of every item (batch['index'])")
        if len(self.criteria) == 0:
            raise UserError("crd was not set up; the trainer must call loss.setup(student_out, teacher_out) first")
        losses = []
        for key, s, t in self.points(student_out, teacher_out):
            loss = self.criteria[key](s, t, index)
            losses.append(loss)
            if self.level in ("post_attention", "attention"):
                self.terms[f"crd/{key}"] = loss.detach()
        return torch.stack(losses).mean()  # eq. (7) / (9): average over layers (and pairs)

"""Registered distillation losses for VocaLiST -> MTDVocaLiST: MTD (UW), AW, NMTD, MiniLM*, KD, RKD, FitNets, BCE.

Every loss is an ``nn.Module`` called as ``loss(student_out, teacher_out, labels) -> scalar`` on captured
behaviour (``SyncOutput`` or anything shaped like ``CapturedBehaviour``), never on models. After each call
``loss.terms`` holds every term as a detached scalar ("bce", "cad/fusion/0", "vr/va/3", "w/0", "total", ...).
Learnable parts (``params`` of AW/UW, the FitNets regressor) are ordinary parameters of the loss module; the
trainer optimises them in a second param group and, when ``loss.max_grad_norm`` is set, calls
``loss.clip_grad_norm_(parameters)`` between ``backward()`` and ``step()``.

Combination rule for the baselines (design.md §2.5): ``BCE + alpha * L_distill`` with alpha = 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import partialmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtdistill.core.errors import UserError
from mtdistill.core.quirks import Quirks, resolve_quirks, switched_off
from mtdistill.distill.baselines import (
    FITNETS_BETA,
    KD_TEMPERATURE,
    RKD_ANGLE_WEIGHT,
    RKD_DISTANCE_WEIGHT,
    fitnets_hint_loss,
    kd_binary,
    kd_over_batch,
    rkd_loss,
)
from mtdistill.distill.behaviour import CapturedBehaviour, cad_loss, vr_loss
from mtdistill.distill.registry import VOCALIST, register
from mtdistill.distill.weighting import WEIGHTINGS, automatic_weighting, uncertainty_weighting, uniform_weighting

Layer = tuple[str, int]
BLOCKS = ("fusion", "av", "va")
"""Official term order (design.md §2.4): fusion layers 1..4, then AV 1..4, then VA 1..4."""
N_LAYERS = 4
ALL_LAYERS: tuple[Layer, ...] = tuple((block, layer) for block in BLOCKS for layer in range(N_LAYERS))
BEHAVIOURS = ("cad", "vr")
N_WEIGHTS = (13, 25)
_BLOCK_ALIASES = {"f": "fusion", "fus": "fusion", "fusion": "fusion", "mem": "fusion", "av": "av", "va": "va"}


def _parse_layer(item: object) -> Layer:
    """One layer name -> (block, 0-based index).

    Accepts the Fig. 3 names "F4" / "AV1" / "VA3" (1-based), the term-name form "fusion/3" (0-based) and
    pairs ("fusion", 3) / ["av", 0] (0-based).
    """
    if isinstance(item, str) and "/" in item:
        block, _, index = item.strip().lower().partition("/")
        if index.isdigit():
            item = (block, int(index))
    if isinstance(item, str):
        name = item.strip().lower()
        head = name.rstrip("0123456789")
        digits = name[len(head) :]
        if head in _BLOCK_ALIASES and digits and 1 <= int(digits) <= N_LAYERS:
            return _BLOCK_ALIASES[head], int(digits) - 1
    elif isinstance(item, Sequence) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], int):
        block = _BLOCK_ALIASES.get(item[0].lower())
        if block is not None and 0 <= item[1] < N_LAYERS:
            return block, item[1]
    raise UserError(
        f"bad distillation layer {item!r}; use 'F1'..'F4', 'AV1'..'AV4', 'VA1'..'VA4', 'fusion/3' or "
        "[block, index] with block in fusion|av|va and index 0..3"
    )


def parse_layers(layers: Iterable[object] | None) -> tuple[Layer, ...]:
    """A layer subset in the official order (fusion, av, va; then layer index); None = all 12 layers."""
    if layers is None:
        return ALL_LAYERS
    if isinstance(layers, str):
        layers = [layers]
    parsed = [_parse_layer(item) for item in layers]
    if not parsed:
        raise UserError("empty distillation layer list; give at least one layer, e.g. layers: [F4]")
    if len(set(parsed)) != len(parsed):
        raise UserError(f"distillation layers {list(layers)} name a layer twice; list each layer once")
    return tuple(sorted(parsed, key=ALL_LAYERS.index))


def layer_name(layer: Layer) -> str:
    """("fusion", 3) -> "fusion/3", the suffix of the term names."""
    return f"{layer[0]}/{layer[1]}"


class DistillLoss(nn.Module):
    """Common plumbing: input checks, BCE, the ``terms`` log and the gradient-clipping hook."""

    needs_teacher: ClassVar[bool] = True
    needs_capture: ClassVar[bool] = True
    """Whether the *student* must run with capture=True (False: the loss reads only ``logits``)."""

    def __init__(self, grad_clip: float | None = None) -> None:
        super().__init__()
        if grad_clip is not None and not grad_clip > 0:
            raise UserError(f"grad_clip must be a positive number or null, not {grad_clip!r}")
        self.max_grad_norm: float | None = grad_clip
        """When set, the trainer calls ``clip_grad_norm_`` after backward (AW "requires gradient clipping")."""
        self.terms: dict[str, Tensor] = {}

    def clip_grad_norm_(self, parameters: Iterable[nn.Parameter] | None = None) -> Tensor | None:
        """Clip the total gradient norm of ``parameters`` (default: this loss's own) to ``max_grad_norm``.

        Returns the norm before clipping, or None when clipping is off. Pass the student's parameters and
        the loss's together to clip the whole update, as the paper's AW recipe intends.
        """
        if self.max_grad_norm is None:
            return None
        params = list(self.parameters() if parameters is None else parameters)
        if not params:
            return None
        return torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)

    def _check(self, student_out: CapturedBehaviour, teacher_out: CapturedBehaviour | None, labels: Tensor) -> Tensor:
        if self.needs_teacher and teacher_out is None:
            raise UserError(
                f"loss {type(self).__name__} distils from a teacher but got no teacher output; "
                "run the teacher with capture=True (or use the 'bce' loss)"
            )
        logits = student_out.logits
        labels = torch.as_tensor(labels, device=logits.device).to(logits.dtype)
        if labels.shape != logits.shape:
            raise UserError(
                f"labels have shape {tuple(labels.shape)} but the logits {tuple(logits.shape)}; "
                "give one 0/1 label per pair"
            )
        return labels

    def _finish(self, total: Tensor, terms: dict[str, Tensor]) -> Tensor:
        terms["total"] = total
        self.terms = {name: value.detach() for name, value in terms.items()}
        return total


def bce_loss(student_out: CapturedBehaviour, labels: Tensor) -> Tensor:
    """L_BCE on the sync logits (the supervised task of Eq. 3-4)."""
    return F.binary_cross_entropy_with_logits(student_out.logits.float(), labels.float())


@register("bce", family=VOCALIST)
class BCELoss(DistillLoss):
    """BCE only: the student trained without a teacher (Table 1, first row)."""

    needs_teacher: ClassVar[bool] = False
    needs_capture: ClassVar[bool] = False

    def __init__(self, grad_clip: float | None = None) -> None:
        super().__init__(grad_clip)

    def forward(self, student_out: CapturedBehaviour, teacher_out: CapturedBehaviour | None, labels: Tensor) -> Tensor:
        labels = self._check(student_out, teacher_out, labels)
        bce = bce_loss(student_out, labels)
        return self._finish(bce, {"bce": bce})


@register("mtd", family=VOCALIST)
class MTDLoss(DistillLoss):
    """CAD + VR mimicry of the cross-modal Transformers, weighted uniform (NMTD), AW or UW (MTD, Eq. 4).

    weighting: "uw" (Eq. 4, the paper's method) | "aw" (softmax weights, Eq. 3) | "uniform" (plain sum, Eq. 3).
    n_weights: 25 = CAD and VR of a layer get their own weight, [BCE, CAD..., VR...] (the paper);
        13 = they share one, [BCE, layer...] (the released training script). With a layer subset or one
        behaviour the real number of weights follows: ``len(loss.params) == len(loss.task_names)``.
    layers: subset of layers (None = all 12), "F1".."F4", "AV1".."AV4", "VA1".."VA4" or ("fusion", 3).
    terms: which behaviours to mimic, ("cad", "vr") (Table 2: ("cad",) or ("vr",)).
    va_clamp: shortcut for ``quirks.va_cad_clamp``: False is ``quirks.replace(va_cad_clamp=False)`` (the VA CAD
        term becomes a masked KL that ignores the masked entries); True keeps the quirks' own value.
    quirks: ``kl_reduction`` ('mean' as released | 'batchmean'), ``va_cad_clamp`` and ``kl_log_of_softmax``
        (``softmax().log()`` as released | ``log_softmax``) are read from here (a ``Quirks`` or a mapping).
    alpha: weight of the distillation sum for "uniform" (BCE + alpha * sum), 1 as in the release.
    grad_clip: max gradient norm the trainer should clip to (see ``clip_grad_norm_``); None = no clipping.
    """

    def __init__(
        self,
        weighting: str = "uw",
        n_weights: int = 25,
        layers: Iterable[object] | None = None,
        va_clamp: bool = True,
        quirks: Quirks | Mapping[str, object] | None = None,
        terms: Sequence[str] = BEHAVIOURS,
        tau: float = 1.0,
        alpha: float = 1.0,
        grad_clip: float | None = None,
    ) -> None:
        super().__init__(grad_clip)
        if weighting not in WEIGHTINGS:
            raise UserError(f"unknown loss weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")
        if n_weights not in N_WEIGHTS:
            raise UserError(f"n_weights must be 13 (CAD and VR share a weight) or 25 (one each), not {n_weights!r}")
        if isinstance(terms, str):
            terms = [terms]
        if not terms or any(t not in BEHAVIOURS for t in terms) or len(set(terms)) != len(terms):
            raise UserError(f"terms must be a non-empty subset of {BEHAVIOURS}, not {terms!r}")
        if not tau > 0:
            raise UserError(f"temperature tau must be positive, not {tau!r}")
        if weighting != "uniform" and alpha != 1.0:
            raise UserError("alpha only scales the 'uniform' weighting; AW/UW learn their weights, remove alpha")
        self.weighting = weighting
        self.n_weights = n_weights
        self.layers = parse_layers(layers)
        self.behaviours = tuple(b for b in BEHAVIOURS if b in terms)
        self.quirks = switched_off(quirks, va_cad_clamp=bool(va_clamp))
        self.va_clamp = self.quirks.va_cad_clamp
        self.reduction = self.quirks.kl_reduction
        self.tau = float(tau)
        self.alpha = float(alpha)
        self.term_names = [f"{b}/{layer_name(layer)}" for b in self.behaviours for layer in self.layers]
        self.tasks = self._tasks()
        self.task_names = ["bce"] + ["+".join(task) for task in self.tasks]
        if weighting == "uniform":
            self.register_parameter("params", None)
        else:
            # ones at init as released; the key in state_dict is "params"
            self.params = nn.Parameter(torch.ones(len(self.task_names)))

    def _tasks(self) -> list[tuple[str, ...]]:
        """Distillation tasks after BCE: one per term (25-D order) or one per layer, CAD+VR shared (13-D)."""
        if self.n_weights == 25:
            return [(name,) for name in self.term_names]
        return [tuple(f"{b}/{layer_name(layer)}" for b in self.behaviours) for layer in self.layers]

    def _check_captured(self, out: CapturedBehaviour, who: str) -> None:
        attention, values = getattr(out, "attention_logits", None) or {}, getattr(out, "values", None) or {}
        for block, index in self.layers:
            if len(attention.get(block, ())) <= index or len(values.get(block, ())) <= index:
                raise UserError(
                    f"the {who}'s captured behaviour has no layer {block}/{index}; run it with capture=True "
                    "and choose layers it has (loss option layers)"
                )

    def behaviour_terms(self, student_out: CapturedBehaviour, teacher_out: CapturedBehaviour) -> dict[str, Tensor]:
        """Every CAD / VR term (Eq. 2) of the selected layers, keyed "cad/fusion/0", "vr/va/3", ..."""
        self._check_captured(student_out, "student")
        self._check_captured(teacher_out, "teacher")
        out: dict[str, Tensor] = {}
        for block, index in self.layers:
            if "cad" in self.behaviours:
                is_va = block == "va"
                out[f"cad/{block}/{index}"] = cad_loss(
                    student_out.attention_logits[block][index],
                    teacher_out.attention_logits[block][index],
                    tau=self.tau,
                    reduction=self.reduction,
                    clamp=is_va and self.va_clamp,
                    masked=is_va and not self.va_clamp,
                    log_of_softmax=self.quirks.kl_log_of_softmax,
                )
        for block, index in self.layers:
            if "vr" in self.behaviours:
                out[f"vr/{block}/{index}"] = vr_loss(
                    student_out.values[block][index],
                    teacher_out.values[block][index],
                    tau=self.tau,
                    reduction=self.reduction,
                    log_of_softmax=self.quirks.kl_log_of_softmax,
                )
        return out

    def forward(self, student_out: CapturedBehaviour, teacher_out: CapturedBehaviour, labels: Tensor) -> Tensor:
        labels = self._check(student_out, teacher_out, labels)
        bce = bce_loss(student_out, labels)
        terms = self.behaviour_terms(student_out, teacher_out)
        losses = torch.stack([bce] + [sum(terms[name] for name in task) for task in self.tasks])
        if self.weighting == "uniform":
            total, weights = uniform_weighting(losses, self.alpha)
        elif self.weighting == "aw":
            total, weights = automatic_weighting(losses, self.params)
        else:
            total, weights = uncertainty_weighting(losses, self.params)
        logged = {"bce": bce, **terms, "distill": losses[1:].sum()}
        logged.update({f"w/{i}": w for i, w in enumerate(weights)})
        return self._finish(total, logged)

    def extra_repr(self) -> str:
        layers = ",".join(layer_name(layer) for layer in self.layers)
        weights = f"alpha={self.alpha}" if self.weighting == "uniform" else f"n_weights={self.n_weights}"
        return (
            f"weighting={self.weighting}, {weights}, tasks={len(self.task_names)}, terms={self.behaviours}, "
            f"layers=[{layers}], va_clamp={self.va_clamp}, reduction={self.reduction}, "
            f"log_of_softmax={self.quirks.kl_log_of_softmax}"
        )


@register("nmtd", family=VOCALIST)
class NMTDLoss(MTDLoss):
    """NMTD (Eq. 3, uniform): BCE + alpha * sum of CAD + VR over the chosen layers (all 12 by default)."""

    __init__ = partialmethod(MTDLoss.__init__, "uniform", 25)


@register("aw", family=VOCALIST)
class AWLoss(MTDLoss):
    """Eq. 3 with automatic weighting, w = softmax(params), 13 or 25 learnable weights (design.md §2.4)."""

    __init__ = partialmethod(MTDLoss.__init__, "aw")


@register("minilm", family=VOCALIST)
class MiniLMLoss(MTDLoss):
    """MiniLM*: BCE + CAD + VR of the last Fusion layer only, uniform weights (design.md §2.5, an inference)."""

    __init__ = partialmethod(MTDLoss.__init__, "uniform", 25, layers=("F4",))


@register("kd", family=VOCALIST)
class KDLoss(DistillLoss):
    """BCE + alpha * Hinton KD at T=5 on the sync logits.

    ``quirks.kd_softmax_over_batch`` (True, released) takes the softmax over the batch dimension; False gives a
    per-sample binary KD on sigmoid probabilities. ``over_batch`` records which one this loss computes.
    """

    needs_capture: ClassVar[bool] = False  # the sync logits are all it reads

    def __init__(
        self,
        temperature: float = KD_TEMPERATURE,
        alpha: float = 1.0,
        quirks: Quirks | Mapping[str, object] | None = None,
        grad_clip: float | None = None,
    ) -> None:
        super().__init__(grad_clip)
        if not temperature > 0:
            raise UserError(f"KD temperature must be positive, not {temperature!r}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.quirks = resolve_quirks(quirks)
        self.over_batch = self.quirks.kd_softmax_over_batch

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, over_batch={self.over_batch}"

    def forward(self, student_out: CapturedBehaviour, teacher_out: CapturedBehaviour, labels: Tensor) -> Tensor:
        labels = self._check(student_out, teacher_out, labels)
        bce = bce_loss(student_out, labels)
        kd_fn = kd_over_batch if self.over_batch else kd_binary  # design.md §2.5 / Quirks.kd_softmax_over_batch
        kd = kd_fn(student_out.logits, teacher_out.logits, self.temperature)
        return self._finish(bce + self.alpha * kd, {"bce": bce, "kd": kd})


RKD_FEATURES = ("pooled", "fusion")


@register("rkd", family=VOCALIST)
class RKDLoss(DistillLoss):
    """BCE + alpha * RKD (distance x 25 + angle x 50, smooth-L1).

    features: "pooled" (default) = ``out.pooled`` (B, d), the classifier's input after max-pool, fc and tanh;
    "fusion" = the Fusion block output ``hidden["fusion"][-1]`` (B, 16, d) flattened per sample. The release
    never says which features it used (design.md §2.5); the pooled embedding is the sample-level representation.
    """

    def __init__(
        self,
        features: str = "pooled",
        distance_weight: float = RKD_DISTANCE_WEIGHT,
        angle_weight: float = RKD_ANGLE_WEIGHT,
        alpha: float = 1.0,
        grad_clip: float | None = None,
    ) -> None:
        super().__init__(grad_clip)
        if features not in RKD_FEATURES:
            raise UserError(f"unknown RKD features {features!r}; use one of {', '.join(RKD_FEATURES)}")
        self.features = features
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)
        self.alpha = float(alpha)

    def extra_repr(self) -> str:
        return (
            f"features={self.features}, distance_weight={self.distance_weight}, "
            f"angle_weight={self.angle_weight}, alpha={self.alpha}"
        )

    def _features(self, out: CapturedBehaviour) -> Tensor:
        return out.pooled if self.features == "pooled" else out.hidden["fusion"][-1]

    def forward(self, student_out: CapturedBehaviour, teacher_out: CapturedBehaviour, labels: Tensor) -> Tensor:
        labels = self._check(student_out, teacher_out, labels)
        bce = bce_loss(student_out, labels)
        distance, angle = rkd_loss(
            self._features(student_out), self._features(teacher_out), self.distance_weight, self.angle_weight
        )
        total = bce + self.alpha * (distance + angle)
        return self._finish(total, {"bce": bce, "rkd/distance": distance, "rkd/angle": angle})


FITNETS_EMBEDDINGS = {"last": ("fusion",), "cross": ("av", "va"), "both": ("fusion", "av", "va")}
FITNETS_DIRECTIONS = ("teacher_to_student", "student_to_teacher")
"""``FitNetsLoss.direction`` for ``Quirks.fitnets_teacher_to_student`` True (released) and False (the paper)."""


@register("fitnets", family=VOCALIST)
class FitNetsLoss(DistillLoss):
    """BCE + alpha * FitNets hints: beta (100) x MSE between block outputs through a learnable Linear regressor.

    emb: "last" = Fusion output ``hidden["fusion"][-1]`` (B, 16, d); "cross" = AV (B, 16, d) and VA (B, 5, d)
    outputs; "both" = all three, summed. ``quirks.fitnets_teacher_to_student`` (True, released): Linear(teacher_dim
    -> student_dim) maps the teacher's features onto the student's; False: the classic FitNets regressor on the
    student, Linear(student_dim -> teacher_dim). ``direction`` records which one this loss computes.
    One regressor is shared by all embeddings; it exists from construction so the optimizer sees it.
    """

    def __init__(
        self,
        teacher_dim: int = 512,
        student_dim: int = 200,
        emb: str = "last",
        beta: float = FITNETS_BETA,
        alpha: float = 1.0,
        quirks: Quirks | Mapping[str, object] | None = None,
        grad_clip: float | None = None,
    ) -> None:
        super().__init__(grad_clip)
        if emb not in FITNETS_EMBEDDINGS:
            raise UserError(f"unknown FitNets emb {emb!r}; use one of {', '.join(FITNETS_EMBEDDINGS)}")
        self.quirks = resolve_quirks(quirks)
        self.emb = emb
        self.direction = FITNETS_DIRECTIONS[0 if self.quirks.fitnets_teacher_to_student else 1]
        self.teacher_dim, self.student_dim = int(teacher_dim), int(student_dim)
        self.beta = float(beta)
        self.alpha = float(alpha)
        if self.quirks.fitnets_teacher_to_student:
            self.regressor = nn.Linear(self.teacher_dim, self.student_dim)
        else:
            self.regressor = nn.Linear(self.student_dim, self.teacher_dim)

    def extra_repr(self) -> str:
        return f"emb={self.emb}, direction={self.direction}, beta={self.beta}, alpha={self.alpha}"

    def _check_width(self, features: Tensor, expected: int, who: str) -> None:
        if features.shape[-1] != expected:
            raise UserError(
                f"FitNets expects {who} width {expected} but got {features.shape[-1]}; "
                f"set {who}_dim: {features.shape[-1]} in the loss config"
            )

    def forward(self, student_out: CapturedBehaviour, teacher_out: CapturedBehaviour, labels: Tensor) -> Tensor:
        labels = self._check(student_out, teacher_out, labels)
        bce = bce_loss(student_out, labels)
        terms: dict[str, Tensor] = {"bce": bce}
        for block in FITNETS_EMBEDDINGS[self.emb]:
            student = student_out.hidden[block][-1]
            teacher = teacher_out.hidden[block][-1].detach()
            self._check_width(student, self.student_dim, "student")
            self._check_width(teacher, self.teacher_dim, "teacher")
            if self.quirks.fitnets_teacher_to_student:
                terms[f"fitnets/{block}"] = fitnets_hint_loss(student, self.regressor(teacher), self.beta)
            else:
                terms[f"fitnets/{block}"] = fitnets_hint_loss(self.regressor(student), teacher, self.beta)
        hint = sum(value for name, value in terms.items() if name.startswith("fitnets/"))
        return self._finish(bce + self.alpha * hint, terms)
